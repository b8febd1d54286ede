"""Time parsing shared by the callback parser and the read API: ISO-8601 or Unix milliseconds."""

from __future__ import annotations

import datetime as dt


def parse_time_ms(value: object) -> int | None:
    """ISO-8601 (Z or offset; naive means UTC), or an integer of Unix ms; None if it is neither."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if not isinstance(value, str):
        return None
    s = value.strip()
    if not s:
        return None
    if s.lstrip("-").isdigit():
        return int(s)
    try:
        parsed = dt.datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def ms_to_iso(ms: int) -> str:
    """Millisecond-precision UTC ISO-8601 with a Z, as in the snapshot JSON."""
    d = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def dt_to_iso(d: dt.datetime) -> str:
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return ms_to_iso(int(d.timestamp() * 1000))


def now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)
