"""Strict parsing of the integers that come from outside (query strings, paths, headers, cursors).

One function per kind, each with an explicit range: only ASCII digits count (``"１２"``, ``"١٢٣"`` and
``"²"`` are refused although ``str.isdigit`` accepts them), the length is checked before ``int()`` runs (so
a 5,000-digit value is refused at once, not by Python's int-size guard), and no float parsing is involved
(``NaN``, ``1e999``). Times are in receiver/timeutil.py, which uses these. Bottom layer: imports nothing.
"""

from __future__ import annotations

MAX_INT64 = 2**63 - 1  # the largest id any backend's BIGINT holds


class StrictError(ValueError):
    """A value from outside that is not an integer in the expected range; callers turn it into their 4xx."""


def _digits(raw: str) -> bool:
    return raw.isascii() and raw.isdigit()


def parse_int(raw: object, lo: int, hi: int) -> int:
    """A decimal integer in ``lo..hi`` written with ASCII digits (a leading ``-`` only when ``lo < 0``)."""
    if not isinstance(raw, str):
        raise StrictError("not a string")
    body = raw[1:] if raw.startswith("-") and lo < 0 else raw
    # Leading zeros are allowed, within the width of the widest value of the range plus a little.
    if not body or len(body) > len(str(max(abs(lo), abs(hi)))) + 2 or not _digits(body):
        raise StrictError(f"not an integer from {lo} to {hi}")
    value = -int(body) if body is not raw else int(body)
    if not lo <= value <= hi:
        raise StrictError(f"not an integer from {lo} to {hi}")
    return value


def parse_id(raw: object) -> int:
    """A row id: a positive 64-bit integer."""
    return parse_int(raw, 1, MAX_INT64)


def parse_decimal_milli(raw: object, lo: int, hi: int) -> int:
    """A non-negative decimal with up to three fraction digits (``"0.5"``, ``"2"``) as thousandths, in lo..hi."""
    if not isinstance(raw, str):
        raise StrictError("not a string")
    whole, dot, frac = raw.partition(".")
    if (dot and not 1 <= len(frac) <= 3) or (frac and not _digits(frac)):
        raise StrictError("at most three digits after the point")
    value = parse_int(whole, 0, hi // 1000 + 1) * 1000 + (int(frac.ljust(3, "0")) if frac else 0)
    if not lo <= value <= hi:
        raise StrictError(f"not a number from {lo / 1000} to {hi / 1000}")
    return value
