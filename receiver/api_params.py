"""Query parameter parsing for the read API: bad values become 400s with the error object, never 500s."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from flask import request

from .errors import ApiError
from .timeutil import parse_time_ms

MAX_LIMIT = 1000
_CURSOR_KEY = b"receiver-cursor-v1"


def time_param(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    ms = parse_time_ms(raw)
    if ms is None:
        raise ApiError(400, "InvalidParameter", f"{name} must be ISO-8601 or Unix milliseconds, got {raw!r}")
    return ms


def limit_param(default: int = 100) -> int:
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "InvalidParameter", f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def order_param() -> str:
    raw = request.args.get("order", "desc") or "desc"
    if raw not in {"asc", "desc"}:
        raise ApiError(400, "InvalidParameter", f"order must be asc or desc, got {raw!r}")
    return raw


def choice_param(name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise ApiError(400, "InvalidParameter", f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def encode_cursor(scope: str, values: list[Any]) -> str:
    """Opaque and tamper-evident: a forged cursor is refused instead of producing a strange page."""
    payload = json.dumps([scope, values], separators=(",", ":")).encode()
    mac = hmac.new(_CURSOR_KEY, payload, hashlib.sha256).digest()[:8]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


def decode_cursor(scope: str) -> list[Any] | None:
    raw = request.args.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        mac, payload = blob[:8], blob[8:]
        if not hmac.compare_digest(mac, hmac.new(_CURSOR_KEY, payload, hashlib.sha256).digest()[:8]):
            raise ValueError("bad mac")
        got_scope, values = json.loads(payload)
        if got_scope != scope or not isinstance(values, list):
            raise ValueError("wrong scope")
        return values
    except (ValueError, TypeError):
        raise ApiError(400, "InvalidCursor", "cursor is not one this endpoint issued") from None
