"""Time parsing shared by the callback parser, the read API and the CLI: ISO-8601 or Unix milliseconds.

``parse_time_ms`` is the one strict parser of a time from outside: finite, within years 1000-9999, ASCII
only, length-bounded before anything parses it (receiver/strict.py does the integers).
"""

from __future__ import annotations

import datetime as dt
import math

from receiver.strict import StrictError, parse_int

# Times outside years 1000..9999 are typos or probes; refusing them keeps every backend's BIGINT happy.
MIN_TIME_MS = -30_610_224_000_000  # 1000-01-01T00:00:00Z
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_TIME_TEXT = 64  # characters: longer is not a time, whatever it says
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def _in_range(ms: int) -> int | None:
    return ms if MIN_TIME_MS <= ms <= MAX_TIME_MS else None


def parse_time_ms(value: object) -> int | None:
    """ISO-8601 (Z or offset; naive means UTC), or an integer of Unix ms, within years 1000-9999.

    None for anything else: absent, empty, a bool, NaN or an infinity, out of range, non-ASCII digits,
    too long. Never raises.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _in_range(value)
    if isinstance(value, float):
        return _in_range(int(value)) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    s = value.strip()
    if not s or len(s) > MAX_TIME_TEXT or not s.isascii():
        return None
    try:
        return parse_int(s, MIN_TIME_MS, MAX_TIME_MS)
    except StrictError:
        pass
    if s.lstrip("-").isdigit():
        return None  # digits, but not a time in range: never read as an ISO basic-format date
    try:
        parsed = dt.datetime.fromisoformat(s.replace("z", "Z"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return _in_range((parsed - _EPOCH) // _MS)
    except (ValueError, OverflowError):
        return None


def ms_to_iso(ms: int) -> str:
    """Millisecond-precision UTC ISO-8601 with a Z, as in the snapshot JSON (integer arithmetic, no float)."""
    d = _EPOCH + dt.timedelta(milliseconds=ms)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def dt_to_iso(d: dt.datetime) -> str:
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return ms_to_iso(int(d.timestamp() * 1000))


def now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)
