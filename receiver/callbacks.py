"""POST /callbacks/live-snapshot: authenticate, parse, record, dispatch, answer 200. Nothing slow."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

from flask import Blueprint, Response, current_app, g, request

from .callback_parse import CallbackParseError, parse_callback
from .errors import ApiError
from .services import Services

log = logging.getLogger(__name__)

bp = Blueprint("callbacks", __name__)


def _services() -> Services:
    svc: Services = current_app.extensions["receiver"]
    return svc


def _read_bounded(limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, "PayloadTooLarge", f"callback body over {limit} bytes")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "PayloadTooLarge", f"callback body over {limit} bytes")
    return data


def _candidate_urls(public_url: str | None) -> list[str]:
    query = request.query_string.decode("latin-1")
    base = public_url.rstrip("/") + request.path if public_url else request.base_url
    urls = [base + ("?" + query if query else "")]
    if query:
        urls.append(base)
    return urls


def _check_signature(keys: tuple[str, ...], max_skew: int, public_url: str | None) -> None:
    ts = request.headers.get("X-ICE-TIMESTAMP", "").strip()
    sig = request.headers.get("X-ICE-SIGNATURE", "").strip().lower()
    if not ts or not sig:
        raise ApiError(401, "MissingSignature", "X-ICE-TIMESTAMP and X-ICE-SIGNATURE are required")
    if not ts.isdigit():
        raise ApiError(401, "InvalidSignature", "X-ICE-TIMESTAMP must be Unix seconds")
    if abs(time.time() - int(ts)) > max_skew:
        raise ApiError(401, "StaleSignature", f"X-ICE-TIMESTAMP is more than {max_skew} s from now")
    ok = False
    # Check every candidate so the time taken does not reveal which key or URL nearly matched.
    for url in _candidate_urls(public_url):
        for key in keys:
            expected = hashlib.md5(f"{url}|{ts}|{key}".encode()).hexdigest()
            ok |= hmac.compare_digest(expected, sig)
    if not ok:
        raise ApiError(401, "InvalidSignature", "X-ICE-SIGNATURE does not match")


def _handle() -> Response:
    svc = _services()
    s = svc.settings
    body = _read_bounded(s.max_callback_bytes)
    if s.callback_auth_keys:
        _check_signature(s.callback_auth_keys, s.callback_max_skew, s.public_url)
    try:
        items, skipped = parse_callback(body)
    except CallbackParseError as e:
        log.info("callback refused (%s): %r", e.code, body[:512])
        raise ApiError(400, e.code, str(e)) from None
    if not items:
        first = skipped[0] if skipped else CallbackParseError("MissingJobId", "no JobId in the callback")
        log.info("callback refused (%s): %r", first.code, body[:512])
        raise ApiError(400, first.code, str(first))
    recorded = svc.intake.record(items)
    if recorded.new_ids and svc.dispatcher is not None:
        svc.dispatcher.submit(recorded.new_ids)
    answer: dict[str, object] = {
        "status": "accepted" if recorded.new_ids else "duplicate",
        "events": [str(i) for i in recorded.event_ids],
    }
    if skipped:
        # A batch with some unusable items still records the good ones; say what was dropped and why.
        answer["skipped"] = [{"code": e.code, "message": str(e)} for e in skipped]
    # Encoded here rather than by jsonify, and the answer left on `g` for the metrics hook so it does not
    # parse the body back: together ~10 % of a callback's CPU under load (bench/callbacks.py).
    g.callback_answer = answer["status"]
    return Response(json.dumps(answer, separators=(",", ":")) + "\n", mimetype="application/json")


@bp.post("/callbacks/live-snapshot")
def callback() -> Response:
    if _services().settings.callback_token:
        raise ApiError(404, "NotFound", "the callback path needs its token")
    return _handle()


@bp.post("/callbacks/live-snapshot/<token>")
def callback_with_token(token: str) -> Response:
    expected = _services().settings.callback_token
    if not expected:
        raise ApiError(404, "NotFound", "no callback token is configured")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "InvalidToken", "wrong callback token")
    return _handle()
