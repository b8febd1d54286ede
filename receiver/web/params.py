"""Query parameter parsing for the read API: bad values become 400s with the error object, never 500s."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from flask import request

from receiver.services import current_services
from receiver.strict import MAX_INT64, StrictError, parse_id, parse_int
from receiver.timeutil import MAX_TIME_MS, MIN_TIME_MS, parse_time_ms
from receiver.web.errors import ApiError

MAX_LIMIT = 1000
MAX_CURSOR_CHARS = 1024
_DEFAULT_CURSOR_KEY = b"receiver-cursor-v1"
_MAC_BYTES = 12


def _bad(name: str, expected: str, raw: str) -> ApiError:
    return ApiError(400, "InvalidParameter", f"{name} must be {expected}, got {raw[:100]!r}")


def path_id(raw: str) -> int | None:
    """A row id from a path segment (positive, 64-bit, ASCII digits), or None: the caller answers 404."""
    try:
        return parse_id(raw)
    except StrictError:
        return None


# Pure parsers (a raw query value in, a value or ApiError out), then the request-reading wrappers.

def parse_time(name: str, raw: str) -> int:
    ms = parse_time_ms(raw)
    if ms is None:
        raise _bad(name, "ISO-8601 or Unix milliseconds (years 1000 to 9999)", raw)
    return ms


def parse_limit(raw: str) -> int:
    try:
        return parse_int(raw, 1, MAX_LIMIT)
    except StrictError:
        raise _bad("limit", f"an integer from 1 to {MAX_LIMIT}", raw) from None


def parse_width(raw: str, widths: tuple[int, ...]) -> int:
    try:
        width = parse_int(raw, 1, max(widths))
    except StrictError:
        width = None
    if width not in widths:
        allowed = ", ".join(str(w) for w in sorted(widths))
        raise ApiError(400, "InvalidParameter", f"width must be one of {allowed}, got {raw[:100]!r}")
    return width


def parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise _bad(name, f"one of {', '.join(choices)}", raw)
    return raw


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
    return parse_limit(raw)


def order_param() -> str:
    return parse_choice("order", request.args.get("order", "desc") or "desc", ("asc", "desc"))


def choice_param(name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    return parse_choice(name, raw, choices)


# The keyset cursor: [scope, values] as JSON, HMAC-tagged, base64url. Each value has a kind with a range,
# checked on the way in as strictly as any other number from outside (anyone can mint a cursor when no
# signing key is configured, so the tag proves nothing about the values).

CURSOR_KINDS: dict[str, Callable[[object], bool]] = {
    "id": lambda v: type(v) is int and 1 <= v <= MAX_INT64,
    "time": lambda v: type(v) is int and MIN_TIME_MS <= v <= MAX_TIME_MS,
    # What a job id can be (intake's limit; printable excludes NUL, controls and lone surrogates).
    "job": lambda v: isinstance(v, str) and 1 <= len(v) <= 128 and v.isprintable(),
    "sub": lambda v: isinstance(v, str) and v.startswith("sub_") and len(v) <= 40 and v[4:].isascii()
    and v[4:].isalnum(),
}


def _invalid_cursor() -> ApiError:
    return ApiError(400, "InvalidCursor", "cursor is not one this endpoint issued for these filters")


def cursor_key(secret: str | None) -> bytes:
    # Keyed by the deployment's secret when there is one, so cursors cannot be forged from the source code;
    # stable across processes and restarts, so a cursor survives a deploy.
    return hashlib.sha256(b"cursor\0" + secret.encode()).digest() if secret else _DEFAULT_CURSOR_KEY


def make_cursor(key: bytes, scope: str, values: list[Any]) -> str:
    """Opaque and tamper-evident: a forged cursor is refused instead of producing a strange page."""
    payload = json.dumps([scope, values], separators=(",", ":")).encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


def read_cursor(key: bytes, scope: str, raw: str, kinds: tuple[str, ...]) -> list[Any]:
    """The values of a cursor made by make_cursor for ``scope``, each of its kind (CURSOR_KINDS), or 400."""
    if not raw.isascii() or len(raw) > MAX_CURSOR_CHARS:
        raise _invalid_cursor()
    try:
        blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except ValueError:
        raise _invalid_cursor() from None
    mac, payload = blob[:_MAC_BYTES], blob[_MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]):
        raise _invalid_cursor()
    try:
        # At most 768 bytes (MAX_CURSOR_CHARS of base64), so at most 384 levels of nesting for the decoder.
        doc = json.loads(payload, parse_constant=lambda c: None)
    except (ValueError, RecursionError):
        raise _invalid_cursor() from None
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == scope and isinstance(doc[1], list)):
        raise _invalid_cursor()
    values: list[Any] = doc[1]
    if len(values) != len(kinds) or not all(CURSOR_KINDS[k](v) for v, k in zip(values, kinds, strict=True)):
        raise _invalid_cursor()
    return values


def encode_cursor(scope: str, values: list[Any]) -> str:
    return make_cursor(cursor_key(current_services().settings.url_signing_secret), scope, values)


def decode_cursor(scope: str, kinds: tuple[str, ...] = ("id",)) -> list[Any] | None:
    """The request's cursor values (see read_cursor), or None when absent."""
    raw = request.args.get("cursor")
    if raw is None or raw == "":
        return None
    return read_cursor(cursor_key(current_services().settings.url_signing_secret), scope, raw, kinds)
