"""Query parameter parsing for the read API: bad values become 400s with the error object, never 500s."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from flask import request

from receiver.services import current_services
from receiver.timeutil import parse_time_ms
from receiver.web.errors import ApiError

MAX_LIMIT = 1000
# Times outside years 1000..9999 are typos or probes; refusing them keeps every backend's BIGINT happy.
MIN_TIME_MS = -30_610_224_000_000
MAX_TIME_MS = 253_402_300_799_999
_DEFAULT_CURSOR_KEY = b"receiver-cursor-v1"


def _bad(name: str, expected: str, raw: str) -> ApiError:
    return ApiError(400, "InvalidParameter", f"{name} must be {expected}, got {raw[:100]!r}")


def is_ascii_int(raw: str, max_digits: int = 18) -> bool:
    # str.isdigit() accepts "²" and other digits int() refuses; only plain ASCII digits are numbers here.
    return raw.isascii() and raw.isdigit() and len(raw) <= max_digits


def parse_time(name: str, raw: str) -> int:
    try:
        ms = parse_time_ms(raw)
    except (ValueError, OverflowError):
        ms = None
    if ms is None or not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise _bad(name, "ISO-8601 or Unix milliseconds (years 1000 to 9999)", raw)
    return ms


def time_param(name: str, required: bool = False) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        if required:
            raise ApiError(400, "MissingParameter", f"{name} is required (ISO-8601 or Unix milliseconds)")
        return None
    return parse_time(name, raw)


def limit_param(default: int = 100) -> int:
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return default
    if not is_ascii_int(raw, 4) or not 1 <= int(raw) <= MAX_LIMIT:
        raise _bad("limit", f"an integer from 1 to {MAX_LIMIT}", raw)
    return int(raw)


def order_param() -> str:
    raw = request.args.get("order", "desc") or "desc"
    if raw not in {"asc", "desc"}:
        raise _bad("order", "asc or desc", raw)
    return raw


def choice_param(name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise _bad(name, f"one of {', '.join(choices)}", raw)
    return raw


def _cursor_key() -> bytes:
    # Keyed by the deployment's secret when there is one, so cursors cannot be forged from the source code;
    # stable across processes and restarts, so a cursor survives a deploy.
    settings = current_services().settings
    secret = settings.url_signing_secret
    return hashlib.sha256(b"cursor\0" + secret.encode()).digest() if secret else _DEFAULT_CURSOR_KEY


def encode_cursor(scope: str, values: list[Any]) -> str:
    """Opaque and tamper-evident: a forged cursor is refused instead of producing a strange page."""
    payload = json.dumps([scope, values], separators=(",", ":")).encode()
    mac = hmac.new(_cursor_key(), payload, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


def decode_cursor(scope: str, shape: tuple[type, ...] = (int,)) -> list[Any] | None:
    """The cursor's values, checked against ``shape`` (one type per value), or None when absent."""
    raw = request.args.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        if not raw.isascii() or len(raw) > 1024:
            raise ValueError("not a cursor")
        blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        mac, payload = blob[:12], blob[12:]
        if not hmac.compare_digest(mac, hmac.new(_cursor_key(), payload, hashlib.sha256).digest()[:12]):
            raise ValueError("bad mac")
        got_scope, values = json.loads(payload)
        if got_scope != scope or not isinstance(values, list) or len(values) != len(shape):
            raise ValueError("wrong scope")
        if not all(type(v) is t for v, t in zip(values, shape, strict=True)):
            raise ValueError("wrong shape")
        return values
    except (ValueError, TypeError):
        raise ApiError(400, "InvalidCursor", "cursor is not one this endpoint issued for these filters") from None
