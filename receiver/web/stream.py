"""Live updates: GET /v1/stream (Server-Sent Events) and GET /v1/stream/url (a short-lived signed URL for it).

Each message goes out as ``id: <messages.id>``, ``event: <type>``, ``data: <the webhook body>``; a
``: keepalive`` comment every 15 s keeps proxies from closing an idle stream (and finds dead clients: the
write fails). ``Last-Event-ID`` (or ``?last_event_id=``) resumes: the messages after that id written within the
last hour are sent first, from the database, then the live feed (web/live.py) follows. An id older than an
hour, or unknown, resumes from an hour ago: what is older is not sent (webhooks, with their replay, are the
way to receive everything).

A stream holds one web thread and no database connection. A process serves at most RECEIVER_STREAM_CLIENTS
streams (0: half its web threads); beyond that it answers 503, and the viewer falls back to polling.
"""

from __future__ import annotations

import datetime as dt
import queue
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select

from receiver.db.models import Message, MessageType
from receiver.services import Services, current_services
from receiver.strict import MAX_INT64, StrictError, parse_int
from receiver.web.errors import ApiError
from receiver.web.live import Client, Item, LiveFeed, live_feed
from receiver.web.urlsign import sign_path_for

bp = Blueprint("stream", __name__)

PATH = "/v1/stream"
TYPES = tuple(t.value for t in MessageType)
RESUME_WINDOW = dt.timedelta(hours=1)
KEEPALIVE_SECONDS = 15.0
RETRY_MS = 3000  # EventSource's reconnection delay
URL_TTL = 300  # seconds a signed stream URL lets a browser connect (an open stream outlives it)
PAGE = 500


def _filters() -> tuple[str | None, frozenset[str] | None]:
    job_id = request.args.get("job_id", "")
    if len(job_id) > 128:  # any other string is a job id that may simply match nothing
        raise ApiError(400, "InvalidParameter", f"job_id must be a job id (at most 128 characters), "
                       f"got {job_id[:100]!r}…")
    raw = request.args.get("types", "")
    types = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in types if t not in TYPES]
    if unknown or (raw and not types):
        raise ApiError(400, "InvalidParameter", f"types must be a comma-separated list of {', '.join(TYPES)}; "
                       f"got {raw[:100]!r}")
    return job_id or None, frozenset(types) if types else None


def _last_event_id() -> int | None:
    raw = request.headers.get("Last-Event-ID")
    name = "the Last-Event-ID header"
    if raw is None:
        raw, name = request.args.get("last_event_id"), "last_event_id"
    if raw is None or raw.strip() == "":
        return None
    try:
        return parse_int(raw.strip(), 0, MAX_INT64)
    except StrictError:
        raise ApiError(400, "InvalidParameter", f"{name} must be a message id (an integer the stream sent), "
                       f"got {raw[:100]!r}") from None


def max_clients(svc: Services) -> int:
    s = svc.settings
    return s.stream_clients or max(1, s.web_threads // 2)


@bp.get(PATH)
def stream() -> Response:
    job_id, types = _filters()
    last = _last_event_id()
    svc = current_services()
    feed = live_feed(svc, current_app.extensions)
    client = feed.join(job_id, types)
    if feed.count() > max_clients(svc):
        feed.leave(client)
        raise ApiError(503, "TooManyStreams", "this process serves as many live streams as it can; retry later "
                       "or poll the API", {"Retry-After": "30"})
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(_events(svc, feed, client, last), headers=headers, mimetype="text/event-stream")


def _frame(item: Item) -> bytes:
    return f"id: {item.id}\nevent: {item.type}\ndata: {item.body}\n\n".encode()


def _events(svc: Services, feed: LiveFeed, c: Client, last: int | None) -> Iterator[bytes]:
    try:
        yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
        from_db: set[int] = set()  # late ids the catch-up sent, so the live feed does not send them again
        if last is not None:
            for missed in _missed(svc, c, last):
                if missed.id in c.late_at_join:
                    from_db.add(missed.id)
                yield _frame(missed)
        while True:
            try:
                item = c.queue.get(timeout=KEEPALIVE_SECONDS)
            except queue.Empty:
                if c.overflowed:
                    return
                yield b": keepalive\n\n"
                continue
            if item is None:
                return  # the process is shutting down
            if item.id <= c.registered_upto:
                if item.id in from_db:
                    continue  # late, and already sent from the database
            elif last is not None and item.id <= last:
                continue  # the client saw it already (from another process, whose feed was ahead of ours)
            yield _frame(item)
            if c.overflowed and c.queue.empty():
                return  # too slow: it reconnects with its Last-Event-ID and resumes from the database
    finally:
        feed.leave(c)


def _missed(svc: Services, c: Client, last: int) -> Iterator[Item]:
    """The messages after ``last`` up to where the live feed took over, written within the last hour."""
    oldest = dt.datetime.now(dt.UTC) - RESUME_WINDOW
    after = last
    while True:
        q = (select(Message.id, Message.type, Message.job_id, Message.body)
             .where(Message.id > after, Message.id <= c.registered_upto, Message.created_at >= oldest))
        if c.job_id is not None:
            q = q.where(Message.job_id == c.job_id)
        if c.types is not None:
            q = q.where(Message.type.in_(sorted(c.types)))
        with svc.read_engine.connect() as conn:  # a page at a time: no connection held while the client reads
            rows = conn.execute(q.order_by(Message.id).limit(PAGE)).all()
        for r in rows:
            yield Item(int(r[0]), str(r[1]), r[2], r[3])
        if len(rows) < PAGE:
            return
        after = int(rows[-1][0])


@bp.get(PATH + "/url")
def stream_url() -> Response:
    """``{"url", "expires_in"}``: the stream URL for these filters, signed for ``URL_TTL`` seconds when API keys
    gate /v1 (browsers cannot send headers on EventSource). The signature is checked when the stream opens."""
    job_id, types = _filters()
    query: dict[str, Any] = {}
    if job_id:
        query["job_id"] = job_id
    if types:
        query["types"] = ",".join(t for t in TYPES if t in types)
    svc = current_services()
    key = svc.settings.url_signing_secret if svc.settings.api_keys else None
    qs = urlencode(query)
    if key:
        qs = (qs + "&" if qs else "") + sign_path_for(PATH, key, URL_TTL)
    return jsonify({"url": PATH + ("?" + qs if qs else ""), "expires_in": URL_TTL if key else None})
