"""Read API under /v1, and /healthz, /readyz. SQL lives in queries.py, JSON shapes in serialize.py."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select, text

from receiver.config import Settings
from receiver.db import queries
from receiver.db.migrate import is_at_head
from receiver.db.models import EVENT_STATUSES, Event, Thumbnail
from receiver.exceptions import ObjectNotFound
from receiver.services import current_services
from receiver.timeutil import now_ms
from receiver.web.accounts import readiness
from receiver.web.common import IMMUTABLE, SETTLED_MS, job_or_404, not_modified, signing_key
from receiver.web.errors import ApiError
from receiver.web.params import (
    choice_param,
    decode_cursor,
    encode_cursor,
    limit_param,
    order_param,
    parse_width,
    path_id,
    time_param,
)
from receiver.web.serialize import event_json, job_detail_json, job_json, snapshot_json

bp = Blueprint("api", __name__)

SETTLED_MAX_AGE = 300
REDIRECT_TTL = 3600




def _int_id(raw: str, what: str) -> int:
    value = path_id(raw)
    if value is None:
        raise ApiError(404, "NotFound", f"no {what} {raw[:100]!r}")
    return value



def _page(items: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": next_cursor}


def _conditional_json(body: dict[str, Any], cache_control: str) -> Response:
    """JSON with a validator, so a poller re-reading an unchanged page gets a 304 and no body."""
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    etag = f'W/"{hashlib.sha256(data).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if not_modified(etag):
        return Response(status=304, headers=headers)
    return Response(data, status=200, headers=headers, mimetype="application/json")



@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    svc = current_services()
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = is_at_head(svc.engine)
    except Exception as e:  # noqa: BLE001 - readiness reports any failure rather than raising it
        raise ApiError(503, "NotReady", f"database unreachable: {type(e).__name__}") from None
    if not current:
        raise ApiError(503, "NotReady", "database schema is not at head: run `receiver db upgrade`")
    # Missing credentials stay 200: readiness is the database (product.md 3.2), callbacks are still recorded
    # for `receiver replay` once keys are set, and taking the process out of rotation would not fix it.
    if svc.account_list().source is not None:
        return jsonify({"status": "ready", **readiness(svc)})
    status = credentials_status(svc.settings)
    gw = svc.gateways.get(svc.account)
    if gw is not None and gw.credential is not None and gw.credential.configured:
        # The default chain found something beyond AccessKeys (a credentials URI, OIDC, a profile), or the
        # configured credential failed its last refresh.
        status = "error" if gw.credential.status == "error" else "configured"
    return jsonify({"status": "ready", "credentials": status})


def credentials_status(settings: Settings) -> str:
    """``configured`` with an AccessKey pair (ALIBABA_CLOUD_ACCESS_KEY_ID and _SECRET), else ``missing``: every
    ICE call then fails (each event, after its retries) and OSS serves only public-read buckets."""
    return "configured" if settings.access_key_id and settings.access_key_secret else "missing"


@bp.get("/v1/jobs")
def jobs() -> Response:
    limit = limit_param()
    account = request.args.get("account") or None
    cursor = decode_cursor("jobs", ("job",))
    with current_services().readers() as s:
        rows = queries.jobs_with_latest(s, cursor[0] if cursor else None, limit + 1, account)
        key = signing_key()
        items = [job_json(job, latest, key) for job, latest in rows[:limit]]
    next_cursor = encode_cursor("jobs", [rows[limit - 1][0].job_id]) if len(rows) > limit else None
    return jsonify(_page(items, next_cursor))


@bp.get("/v1/jobs/<job_id>")
def job_detail(job_id: str) -> Response:
    with current_services().readers() as s:
        job = job_or_404(s, job_id)
        latest = queries.latest_snapshot(s, job_id)
        counters = queries.job_counters(s, job_id)
        return jsonify(job_detail_json(job, latest, counters, signing_key()))


@bp.get("/v1/jobs/<job_id>/snapshots")
def job_snapshots(job_id: str) -> Response:
    since, until = time_param("since"), time_param("until")
    order, limit = order_param(), limit_param()
    scope = f"snapshots:{job_id}:{order}"
    cursor = decode_cursor(scope, ("time", "id"))
    q = queries.HistoryQuery(job_id, since, until, order, (cursor[0], cursor[1]) if cursor else None, limit + 1)
    with current_services().readers() as s:
        job_or_404(s, job_id)
        rows = queries.history(s, q)
        key = signing_key()
        items = [snapshot_json(r, key) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(scope, [last.captured_at_ms, last.id])
    if until is not None and until <= now_ms() - SETTLED_MS:
        visibility = "private" if current_services().settings.api_keys else "public"
        cache = f"{visibility}, max-age={SETTLED_MAX_AGE}"
    else:
        cache = "no-cache"
    return _conditional_json(_page(items, next_cursor), cache)


@bp.get("/v1/jobs/<job_id>/snapshots/latest")
def job_latest(job_id: str) -> Response:
    with current_services().readers() as s:
        job_or_404(s, job_id)
        snap = queries.latest_snapshot(s, job_id)
        if snap is None:
            raise ApiError(404, "NotFound", f"job {job_id!r} has no snapshots yet")
        return jsonify(snapshot_json(snap, signing_key()))


@bp.get("/v1/jobs/<job_id>/snapshots/nearest")
def job_nearest(job_id: str) -> Response:
    t = time_param("time", required=True)
    assert t is not None
    with current_services().readers() as s:
        job_or_404(s, job_id)
        snap = queries.nearest(s, job_id, t)
        if snap is None:
            raise ApiError(404, "NotFound", f"job {job_id!r} has no snapshots yet")
        return jsonify(snapshot_json(snap, signing_key()))


@bp.get("/v1/snapshots/<snapshot_id>")
def snapshot(snapshot_id: str) -> Response:
    with current_services().readers() as s:
        snap = queries.snapshot_by_id(s, _int_id(snapshot_id, "snapshot"))
        if snap is None:
            raise ApiError(404, "NotFound", f"no snapshot {snapshot_id!r}")
        return jsonify(snapshot_json(snap, signing_key()))


def _width_param(widths: tuple[int, ...]) -> int:
    raw = request.args.get("width")
    if raw is None or raw == "":
        return max(widths)
    return parse_width(raw, widths)


@bp.get("/v1/snapshots/<snapshot_id>/thumbnail")
def thumbnail(snapshot_id: str) -> Response:
    svc = current_services()
    sid = _int_id(snapshot_id, "snapshot")
    width = _width_param(svc.settings.thumbnail_widths)
    with svc.readers() as s:
        # The asked width, or (a source narrower than it was not upscaled) the largest rendition below it,
        # or failing that the smallest there is.
        thumbs = list(s.execute(select(Thumbnail).where(Thumbnail.snapshot_id == sid)).scalars())
    if not thumbs:
        raise ApiError(404, "NotFound", f"no thumbnail for snapshot {snapshot_id!r}")
    fitting = [t for t in thumbs if t.width <= width]
    thumb = max(fitting, key=lambda t: t.width) if fitting else min(thumbs, key=lambda t: t.width)
    etag = f'"{thumb.etag}"'
    headers = {
        "ETag": etag,
        "Cache-Control": IMMUTABLE,
        "Content-Type": "image/jpeg" if thumb.format == "jpeg" else f"image/{thumb.format}",
    }
    if not_modified(etag):
        # Answered from the index alone: the image is never read for a revalidation.
        return Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
    if getattr(svc.thumbs, "redirect", False):
        url = svc.thumbs.presign(thumb.storage_key, REDIRECT_TTL)
        if url:
            resp = Response(status=302, headers={"Location": url})
            resp.headers["Cache-Control"] = f"private, max-age={REDIRECT_TTL // 2}"
            return resp
    try:
        data = svc.thumbs.get(thumb.storage_key)
    except ObjectNotFound:
        raise ApiError(404, "NotFound", "thumbnail file is missing from the store") from None
    svc.metrics.count_thumbnail_bytes(len(data), "served")
    return Response(data, status=200, headers=headers)


@bp.get("/v1/events")
def events() -> Response:
    status = choice_param("status", EVENT_STATUSES)
    job_id = request.args.get("job_id") or None
    limit = limit_param()
    scope = f"events:{status}:{job_id}"
    cursor = decode_cursor(scope, ("id",))
    q = select(Event)
    if status is not None:
        q = q.where(Event.status == status)
    if job_id is not None:
        q = q.where(Event.job_id == job_id)
    if cursor is not None:
        # Newest first by id: events inserted while paging have larger ids, so they never shift a page.
        q = q.where(Event.id < cursor[0])
    q = q.order_by(Event.id.desc()).limit(limit + 1)
    with current_services().readers() as s:
        rows = list(s.execute(q).scalars())
        items = [event_json(e) for e in rows[:limit]]
    next_cursor = encode_cursor(scope, [rows[limit - 1].id]) if len(rows) > limit else None
    return jsonify(_page(items, next_cursor))
