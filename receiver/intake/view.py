"""POST /callbacks/live-snapshot[/<token>]: authenticate, parse, record, dispatch, answer 200. Nothing slow.

The callback is answered straight from the WSGI environ by ``FlaskRoutingBypass``, a thin WSGI layer in front
of Flask (see there for why and when to remove it). Everything else, and any request to these paths that is
not a POST, goes to Flask. The blueprint's views call the same ``answer`` so the app behaves the same if the
layer is left out. Errors are rendered by errors.py as everywhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from http import HTTPStatus
from typing import Any

from flask import Blueprint, Response, g, request
from werkzeug.wrappers import Request
from werkzeug.wsgi import get_content_length

from receiver.accounts import DEFAULT, Account
from receiver.intake.parse import CallbackParseError, EventItem, parse_callback
from receiver.services import Services, current_services
from receiver.strict import StrictError, parse_int
from receiver.timeutil import MAX_TIME_MS
from receiver.web.errors import ApiError, as_api_error, error_body

log = logging.getLogger(__name__)

bp = Blueprint("callbacks", __name__)

PATH = "/callbacks/live-snapshot"

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _token_of(path: str) -> str | None:
    """The token segment of a callback path, "" for the bare path; None when the path is not a callback's
    (the same rule as Flask's ``<token>``: one non-empty segment)."""
    if path == PATH:
        return ""
    if path.startswith(PATH + "/"):
        token = path[len(PATH) + 1 :]
        if token and "/" not in token:
            return token
    return None


def _read_bounded(environ: Environ, limit: int) -> bytes:
    declared = get_content_length(environ)  # None: no length, or chunked; werkzeug's rules
    if declared is not None and declared > limit:
        raise ApiError(413, "PayloadTooLarge", f"callback body over {limit} bytes")
    if declared is None and not environ.get("wsgi.input_terminated"):
        # Neither a length nor a server that ends the stream (chunked under gunicorn, waitress): reading
        # could wait for the client to hang up, so there is no body, as werkzeug would have it.
        return b""
    stream = environ["wsgi.input"]
    data: bytes = stream.read(limit + 1 if declared is None else declared)
    if len(data) > limit:
        raise ApiError(413, "PayloadTooLarge", f"callback body over {limit} bytes")
    return data


def _candidate_urls(environ: Environ, public_url: str | None) -> list[str]:
    query = environ.get("QUERY_STRING", "")
    # Flask's request.path and base_url: host, script root and path decoded as werkzeug does (UTF-8 paths).
    req = Request(environ)
    base = public_url.rstrip("/") + req.path if public_url else req.base_url
    urls = [base + ("?" + query if query else "")]
    if query:
        urls.append(base)
    return urls


def _check_signature(environ: Environ, keys: tuple[str, ...], max_skew: int, public_url: str | None) -> None:
    ts = environ.get("HTTP_X_ICE_TIMESTAMP", "").strip()
    sig = environ.get("HTTP_X_ICE_SIGNATURE", "").strip().lower()
    if not ts or not sig:
        raise ApiError(401, "MissingSignature", "X-ICE-TIMESTAMP and X-ICE-SIGNATURE are required")
    try:
        seconds = parse_int(ts, 0, MAX_TIME_MS // 1000)  # ASCII digits, length-checked before int()
    except StrictError:
        raise ApiError(401, "InvalidSignature", "X-ICE-TIMESTAMP must be Unix seconds") from None
    if abs(time.time() - seconds) > max_skew:
        raise ApiError(401, "StaleSignature", f"X-ICE-TIMESTAMP is more than {max_skew} s from now")
    ok = False
    # Check every candidate so the time taken does not reveal which key or URL nearly matched.
    for url in _candidate_urls(environ, public_url):
        for key in keys:
            expected = hashlib.md5(f"{url}|{ts}|{key}".encode()).hexdigest()
            ok |= hmac.compare_digest(expected, sig)
    if not ok:
        raise ApiError(401, "InvalidSignature", "X-ICE-SIGNATURE does not match")


def _account_for(svc: Services, token: str) -> Account:
    """The account whose token is in the path (RECEIVER_CALLBACK_TOKEN is `default`'s); the bare path belongs to
    the primary account, and only while no account has a token."""
    accounts = svc.account_list()
    tokens = [(a, a.callback_token) for a in accounts if a.callback_token]
    if not token:
        if tokens:
            raise ApiError(404, "NotFound", "the callback path needs its token")
        return accounts.primary
    if not tokens:
        raise ApiError(404, "NotFound", "no callback token is configured")
    # PATH_INFO carries the raw bytes as latin-1 (PEP 3333); the configured tokens are compared as UTF-8. Every
    # token is compared, so the time taken does not say which one nearly matched.
    raw = token.encode("latin-1", "replace")
    found: Account | None = None
    for account, expected in tokens:
        if hmac.compare_digest(raw, expected.encode()) and found is None:
            found = account
    if found is None:
        raise ApiError(401, "InvalidToken", "wrong callback token")
    return found


def _for_account(items: list[EventItem], account: Account) -> list[EventItem]:
    if account.alias == DEFAULT:
        return items
    # The account is part of the event's identity: the same file reported through two accounts' tokens is two
    # events (the one whose account does not own the job is rejected), never a duplicate of the other.
    return [replace(i, account=account.alias,
                    identity=hashlib.sha256(f"{account.alias}\0{i.identity}".encode()).hexdigest()) for i in items]


def _accept(svc: Services, environ: Environ, token: str) -> tuple[bytes, str]:
    s = svc.settings
    account = _account_for(svc, token)
    body = _read_bounded(environ, s.max_callback_bytes)
    if account.callback_auth_keys:
        _check_signature(environ, account.callback_auth_keys, s.callback_max_skew, s.public_url)
    try:
        items, skipped = parse_callback(body)
    except CallbackParseError as e:
        log.info("callback refused (%s): %r", e.code, body[:512])
        raise ApiError(e.status, e.code, str(e)) from None
    if not items:
        first = skipped[0] if skipped else CallbackParseError("MissingJobId", "no JobId in the callback")
        log.info("callback refused (%s): %r", first.code, body[:512])
        raise ApiError(400, first.code, str(first))
    items = _for_account(items, account)
    recorded = svc.intake.record(items)
    if recorded.new_ids and svc.dispatcher is not None:
        svc.dispatcher.submit(recorded.new_ids)
    status = "accepted" if recorded.new_ids else "duplicate"
    answer: dict[str, object] = {"status": status, "events": [str(i) for i in recorded.event_ids]}
    if skipped:
        # A batch with some unusable items still records the good ones; say what was dropped and why.
        answer["skipped"] = [{"code": e.code, "message": str(e)} for e in skipped]
    return (json.dumps(answer, separators=(",", ":")) + "\n").encode(), status


def answer(svc: Services, environ: Environ, token: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The whole callback: status, headers and body, counted in the metrics."""
    headers = [("Content-Type", "application/json")]
    try:
        body, label = _accept(svc, environ, token)
        status = 200
    except Exception as e:
        err = as_api_error(e)
        status, label, body = err.status, err.code, error_body(err.code, err.message)
        headers.extend(err.headers.items())
    svc.metrics.count_callback(status, label)
    headers.append(("Content-Length", str(len(body))))
    return status, headers, body


class FlaskRoutingBypass:
    """BYPASS: WSGI layer: POSTs to the callback paths are answered here, everything else by the wrapped app.

    What it bypasses: Flask's request context, URL routing and before/after-request hooks for the callback
    (the blueprint's views below answer the same way without it). Why: the callback is the one request ICE
    sends at the rate of every job's snapshots, and that Flask machinery cost about as much as parsing and
    recording the event; measured with bench/callbacks.py (bench/RESULTS.md, callbacks section, and its git
    history). When to remove it: when the app without this layer (``app.wsgi_app`` unwrapped, the blueprint
    answering) is within the noise of it on bench/callbacks.py; re-measure after each Flask/Werkzeug upgrade.
    """

    def __init__(self, app: WsgiApp, svc: Services) -> None:
        self.app = app
        self.svc = svc

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            token = _token_of(environ.get("PATH_INFO", ""))
            if token is not None:
                status, headers, body = answer(self.svc, environ, token)
                start_response(f"{status} {HTTPStatus(status).phrase}", headers)
                return [body]
        return self.app(environ, start_response)



def _flask_answer(token: str) -> Response:
    svc = current_services()
    g.callback_counted = True
    # The raw segment, as FlaskRoutingBypass sees it (Flask's has been decoded from UTF-8 already).
    raw = _token_of(request.environ.get("PATH_INFO", ""))
    status, headers, body = answer(svc, request.environ, token if raw is None else raw)
    return Response(body, status=status, headers=headers)


@bp.post(PATH)
def callback() -> Response:
    return _flask_answer("")


@bp.post(PATH + "/<token>")
def callback_with_token(token: str) -> Response:
    return _flask_answer(token)
