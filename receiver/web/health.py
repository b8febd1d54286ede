"""Health, storyboards and originals: GET /v1/jobs/<id>/health, /storyboard.vtt (+ sprites),
/v1/snapshots/<id>/original. Authentication is the app-wide /v1 check (auth.py)."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased
from werkzeug.wrappers import Response as BaseResponse

from receiver.db.models import Job, Snapshot, Thumbnail
from receiver.db.queries import snapshot_by_id
from receiver.exceptions import ObjectNotFound, StoreError, Transient
from receiver.media import storyboard as sb
from receiver.media.health import Thresholds, assess
from receiver.services import Services, current_services
from receiver.strict import StrictError, parse_int
from receiver.timeutil import MAX_TIME_MS, ms_to_iso, now_ms
from receiver.web import health_query as hq
from receiver.web.common import IMMUTABLE, SETTLED_MS, job_or_404, not_modified, signing_key
from receiver.web.errors import ApiError
from receiver.web.params import path_id, time_param
from receiver.web.urlsign import signed_url

bp = Blueprint("health_api", __name__)

DEFAULT_WINDOW_MS = 3600 * 1000  # also the window of the health in stream.health_changed
MAX_WINDOW_MS = 31 * 24 * 3600 * 1000
ORIGINAL_TTL = 300  # seconds a presigned original URL stays valid
MAX_SHEET = 10_000  # far above any plan (storyboard.py keeps at most 1000 tiles)





def _window() -> tuple[int, int]:
    until_param = time_param("until")
    until = now_ms() if until_param is None else until_param
    since = time_param("since")
    since = until - DEFAULT_WINDOW_MS if since is None else since
    if since >= until:
        raise ApiError(400, "InvalidParameter", "since must be before until")
    if until - since > MAX_WINDOW_MS:
        raise ApiError(400, "InvalidParameter", "the window may span at most 31 days")
    return since, until


def _cache_control(settled: bool, max_age: int) -> str:
    scope = "private" if current_services().settings.api_keys else "public"
    return f"{scope}, max-age={max_age}" if settled else f"{scope}, no-cache"



@bp.get("/v1/jobs/<job_id>/health")
def job_health(job_id: str) -> Response:
    since, until = _window()
    svc = current_services()
    with svc.readers() as s:
        job = job_or_404(s, job_id)
        return jsonify(health_answer(s, job, since, until, now_ms(), Thresholds.from_settings(svc.settings)))


def health_answer(s: Session, job: Job, since: int, until: int, now: int, thresholds: Thresholds) -> dict[str, Any]:
    """The health answer of product.md 3.2 for ``job`` over [since, until); also what stream.health_changed
    carries (ops/health_alerts.py), so the message and the API cannot disagree on the shape."""
    job_id = job.job_id
    frames = hq.window_frames(s, job_id, since, until)
    interval = hq.interval_ms(job, frames)
    h = assess(frames, interval_ms=interval, since_ms=since, until_ms=until, now_ms=now, thresholds=thresholds,
               previous_ms=hq.previous_ms(s, job_id, since), first_ever_ms=hq.first_ms(s, job_id),
               next_ms=hq.next_ms(s, job_id, until))
    return {
        "job_id": job_id, "since": ms_to_iso(since), "until": ms_to_iso(until),
        "interval_seconds": interval / 1000 if interval % 1000 else interval // 1000,
        "expected": h.expected, "seen": h.seen, "status": h.status,
        "gaps": [r.to_json() for r in h.gaps], "frozen": [r.to_json() for r in h.frozen],
        "black": [r.to_json() for r in h.black],
    }


def _plan(job_id: str, since: int, until: int) -> sb.Plan:
    svc = current_services()
    with svc.readers() as s:
        job = job_or_404(s, job_id)
        # One row per snapshot with its smallest thumbnail: the tiles are small, so is their source.
        t2 = aliased(Thumbnail)
        # captured_at_ms in the joins: PostgreSQL then reads only the days' partitions (migration 0007).
        smallest = select(func.min(t2.width)).where(t2.snapshot_id == Snapshot.id,
                                                    t2.captured_at_ms == Snapshot.captured_at_ms).scalar_subquery()
        rows = s.execute(
            select(Snapshot.id, Snapshot.captured_at_ms, Snapshot.width, Snapshot.height, Thumbnail.storage_key,
                   Thumbnail.etag)
            .join(Thumbnail, (Thumbnail.snapshot_id == Snapshot.id)
                  & (Thumbnail.captured_at_ms == Snapshot.captured_at_ms) & (Thumbnail.width == smallest))
            .where(Snapshot.job_id == job_id, Snapshot.captured_at_ms >= since, Snapshot.captured_at_ms < until)
            .order_by(Snapshot.captured_at_ms, Snapshot.id)
        ).all()
        interval = hq.interval_ms(job)
    shots = [sb.Shot(r[0], r[1], r[4], r[5]) for r in rows]
    src_w, src_h = (rows[0][2], rows[0][3]) if rows else (16, 9)
    tile_w, tile_h = sb.tile_size(min(svc.settings.thumbnail_widths), src_w, src_h)
    return sb.plan(shots, since_ms=since, until_ms=until, interval_ms=interval, tile_w=tile_w, tile_h=tile_h)


def _sprite_path(job_id: str, since: int, until: int, sheet: int) -> str:
    return f"/v1/jobs/{job_id}/storyboard/{since}-{until}-{sheet}.jpg"


@bp.get("/v1/jobs/<job_id>/storyboard.vtt")
def storyboard_vtt(job_id: str) -> Response:
    since, until = _window()
    p = _plan(job_id, since, until)
    key = signing_key()
    text = sb.render_vtt(p, lambda sh: signed_url(_sprite_path(job_id, since, until, sh.index),
                                                  f"v={sh.digest}", key))
    settled = until <= now_ms() - SETTLED_MS
    etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": _cache_control(settled, 3600)}
    if not_modified(etag):
        return Response(status=304, headers=headers)
    return Response(text, headers=headers, content_type="text/vtt; charset=utf-8")


def _sprite_numbers(since_raw: str, until_raw: str, sheet_raw: str) -> tuple[int, int, int]:
    """The numbers of a sprite path, parsed strictly (werkzeug's int converter takes any Unicode digit and
    any length): Unix ms from 0 to year 9999 and a sheet index, or 400."""
    try:
        return (parse_int(since_raw, 0, MAX_TIME_MS), parse_int(until_raw, 0, MAX_TIME_MS),
                parse_int(sheet_raw, 0, MAX_SHEET))
    except StrictError:
        raise ApiError(400, "InvalidParameter", "a sprite path is <since ms>-<until ms>-<sheet>.jpg, "
                       f"got {f'{since_raw}-{until_raw}-{sheet_raw}'[:100]!r}") from None


@bp.get("/v1/jobs/<job_id>/storyboard/<since>-<until>-<sheet>.jpg")
def storyboard_sprite(job_id: str, since: str, until: str, sheet: str) -> Response:
    return _sprite(job_id, *_sprite_numbers(since, until, sheet))


def _sprite(job_id: str, since: int, until: int, sheet: int) -> Response:
    if since >= until or until - since > MAX_WINDOW_MS:
        raise ApiError(404, "NotFound", "no such storyboard sheet")
    p = _plan(job_id, since, until)
    if sheet >= len(p.sheets):
        raise ApiError(404, "NotFound", "no such storyboard sheet")
    sh = p.sheets[sheet]
    settled = until <= now_ms() - SETTLED_MS
    # The URL names its content (v = digest) when it came from the VTT, so a settled sheet never changes.
    pinned = settled and request.args.get("v") == sh.digest
    etag = f'"{sh.digest}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE if pinned and not current_services().settings.api_keys
               else _cache_control(settled, 3600)}
    if not_modified(etag):
        return Response(status=304, headers=headers)
    svc = current_services()
    store_key = f"{sb.SHEET_PREFIX}{sh.digest[:2]}/{sh.digest}.jpg"
    data: bytes | None = None
    if settled:
        try:
            data = svc.thumbs.get(store_key)
        except ObjectNotFound:
            data = None
    if data is None:
        data = sb.render_sheet(sh, p.tile_w, p.tile_h, svc.thumbs.get)
        if settled:
            # Content-addressed: a later change to the range gets a new digest, never a stale hit.
            svc.thumbs.put(store_key, data, "image/jpeg")
    return Response(data, headers=headers, content_type="image/jpeg")


@bp.get("/v1/snapshots/<snapshot_id>/original")
def original(snapshot_id: str) -> BaseResponse:
    """302 to a presigned OSS URL (default), or the bytes (RECEIVER_ORIGINAL_MODE=stream).

    ``Accept: application/json`` answers ``{"url", "expires_in"}`` instead of redirecting, so a page that
    authenticates with a Bearer header can still show the image in an <img>.
    """
    svc = current_services()
    sid = path_id(snapshot_id)
    if sid is None:
        raise ApiError(404, "NotFound", f"no snapshot {snapshot_id[:100]!r}")
    with svc.readers() as s:
        snap = snapshot_by_id(s, sid)
        if snap is None:
            raise ApiError(404, "NotFound", f"no snapshot {snapshot_id!r}")
    wants_json = request.accept_mimetypes.best == "application/json"
    try:
        # The snapshot's job's account reads (and presigns) its object: another account's keys get 403.
        return _original(svc.for_account(_job_account(svc, snap.job_id)), snap, wants_json)
    except (Transient, StoreError) as e:
        raise ApiError(502, "UpstreamError", f"OSS did not answer usably: {e}") from e


def _job_account(svc: Services, job_id: str) -> str:
    owner = svc.job_accounts.get(job_id)
    if owner is None:
        with svc.readers() as s:
            owner = s.execute(select(Job.account).where(Job.job_id == job_id)).scalar_one_or_none()
    return owner or svc.account


def _original(svc: Services, snap: Snapshot, wants_json: bool) -> BaseResponse:
    if snap.kind == "overwrite":
        _check_still_there(svc, snap)
    if svc.settings.original_mode == "stream":
        if wants_json:
            path = f"/v1/snapshots/{snap.id}/original"
            return jsonify({"url": signed_url(path, "", signing_key()), "expires_in": None})
        obj = svc.source.get(snap.oss_endpoint, snap.oss_bucket, snap.oss_object, svc.settings.max_image_bytes)
        if obj.etag != snap.etag:
            raise ApiError(410, "Gone", "the object was rewritten since this snapshot was taken")
        scope = "private" if svc.settings.api_keys else "public"
        return Response(obj.data, content_type="image/jpeg",
                        headers={"ETag": f'"{snap.sha256[:32]}"', "Cache-Control": f"{scope}, max-age=86400"})
    url = svc.source.presign(snap.oss_endpoint, snap.oss_bucket, snap.oss_object, ORIGINAL_TTL)
    if wants_json:
        return jsonify({"url": url, "expires_in": ORIGINAL_TTL})
    resp = redirect(url, 302)
    resp.headers["Cache-Control"] = f"private, max-age={ORIGINAL_TTL // 2}"
    return resp


def _check_still_there(svc: Services, snap: Snapshot) -> None:
    # An overwrite object holds only the newest frame: an older snapshot's original is gone from OSS.
    try:
        meta = svc.source.head(snap.oss_endpoint, snap.oss_bucket, snap.oss_object)
    except ObjectNotFound:
        raise ApiError(410, "Gone", "the object is no longer in OSS") from None
    if meta.etag != snap.etag:
        raise ApiError(410, "Gone", "the overwrite object was rewritten since this snapshot was taken")
