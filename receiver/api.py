"""Read API under /v1, and /healthz, /readyz."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select, text

from .api_params import choice_param, decode_cursor, encode_cursor, limit_param, order_param, time_param
from .db import is_at_head
from .errors import ApiError
from .exceptions import ObjectNotFound
from .models import EVENT_STATUSES, Event, Snapshot, Thumbnail
from .serialize import event_json, snapshot_json
from .services import Services

bp = Blueprint("api", __name__)


def _svc() -> Services:
    svc: Services = current_app.extensions["receiver"]
    return svc


def _signing_key() -> str | None:
    return _svc().settings.url_signing_secret if _svc().settings.api_keys else None


def _int_id(raw: str, what: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, "NotFound", f"no {what} {raw!r}")
    return int(raw)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    svc = _svc()
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = is_at_head(svc.engine)
    except Exception as e:  # noqa: BLE001 - readiness reports any failure rather than raising it
        raise ApiError(503, "NotReady", f"database unreachable: {type(e).__name__}") from None
    if not current:
        raise ApiError(503, "NotReady", "database schema is not at head: run `receiver db upgrade`")
    return jsonify({"status": "ready"})


@bp.get("/v1/jobs/<job_id>/snapshots")
def job_snapshots(job_id: str) -> Response:
    since, until = time_param("since"), time_param("until")
    order, limit = order_param(), limit_param()
    cursor = decode_cursor(f"snapshots:{job_id}:{order}")
    q = select(Snapshot).where(Snapshot.job_id == job_id)
    if since is not None:
        q = q.where(Snapshot.captured_at_ms >= since)
    if until is not None:
        q = q.where(Snapshot.captured_at_ms < until)
    if cursor is not None:
        ts, sid = int(cursor[0]), int(cursor[1])
        # Keyset on (captured_at_ms, id): stable while new rows arrive, no OFFSET scan.
        if order == "desc":
            q = q.where((Snapshot.captured_at_ms < ts) | ((Snapshot.captured_at_ms == ts) & (Snapshot.id < sid)))
        else:
            q = q.where((Snapshot.captured_at_ms > ts) | ((Snapshot.captured_at_ms == ts) & (Snapshot.id > sid)))
    if order == "desc":
        q = q.order_by(Snapshot.captured_at_ms.desc(), Snapshot.id.desc())
    else:
        q = q.order_by(Snapshot.captured_at_ms.asc(), Snapshot.id.asc())
    with _svc().sessions() as s:
        rows = list(s.execute(q.limit(limit + 1)).scalars())
        key = _signing_key()
        items = [snapshot_json(r, key) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(f"snapshots:{job_id}:{order}", [last.captured_at_ms, last.id])
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.get("/v1/snapshots/<snapshot_id>")
def snapshot(snapshot_id: str) -> Response:
    with _svc().sessions() as s:
        snap = s.get(Snapshot, _int_id(snapshot_id, "snapshot"))
        if snap is None:
            raise ApiError(404, "NotFound", f"no snapshot {snapshot_id!r}")
        return jsonify(snapshot_json(snap, _signing_key()))


def _width_param(widths: tuple[int, ...]) -> int:
    raw = request.args.get("width")
    if raw is None or raw == "":
        return max(widths)
    if not raw.isdigit() or int(raw) not in widths:
        allowed = ", ".join(str(w) for w in sorted(widths))
        raise ApiError(400, "InvalidParameter", f"width must be one of {allowed}, got {raw!r}")
    return int(raw)


@bp.get("/v1/snapshots/<snapshot_id>/thumbnail")
def thumbnail(snapshot_id: str) -> Response:
    svc = _svc()
    sid = _int_id(snapshot_id, "snapshot")
    width = _width_param(svc.settings.thumbnail_widths)
    with svc.sessions() as s:
        thumb = s.execute(
            select(Thumbnail).where(Thumbnail.snapshot_id == sid, Thumbnail.width <= width)
            .order_by(Thumbnail.width.desc()).limit(1)
        ).scalar_one_or_none()
        if thumb is None:
            # A source narrower than the asked width was not upscaled: serve its largest rendition.
            thumb = s.execute(
                select(Thumbnail).where(Thumbnail.snapshot_id == sid).order_by(Thumbnail.width.desc()).limit(1)
            ).scalar_one_or_none()
    if thumb is None:
        raise ApiError(404, "NotFound", f"no thumbnail for snapshot {snapshot_id!r}")
    etag = f'"{thumb.etag}"'
    headers = {
        "ETag": etag,
        "Cache-Control": "public, max-age=31536000, immutable",
        "Content-Type": "image/jpeg" if thumb.format == "jpeg" else f"image/{thumb.format}",
    }
    inm = request.headers.get("If-None-Match", "")
    if etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*":
        # Answered from the index alone: the image is never read for a revalidation.
        return Response(status=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
    try:
        data = svc.thumbs.get(thumb.storage_key)
    except ObjectNotFound:
        raise ApiError(404, "NotFound", "thumbnail file is missing from the store") from None
    return Response(data, status=200, headers=headers)


@bp.get("/v1/events")
def events() -> Response:
    status = choice_param("status", EVENT_STATUSES)
    job_id = request.args.get("job_id") or None
    limit = limit_param()
    cursor = decode_cursor(f"events:{status}:{job_id}")
    q = select(Event)
    if status is not None:
        q = q.where(Event.status == status)
    if job_id is not None:
        q = q.where(Event.job_id == job_id)
    if cursor is not None:
        q = q.where(Event.id < int(cursor[0]))
    q = q.order_by(Event.id.desc()).limit(limit + 1)
    with _svc().sessions() as s:
        rows = list(s.execute(q).scalars())
        items: list[dict[str, Any]] = [event_json(e) for e in rows[:limit]]
    next_cursor = encode_cursor(f"events:{status}:{job_id}", [rows[limit - 1].id]) if len(rows) > limit else None
    return jsonify({"items": items, "next_cursor": next_cursor})
