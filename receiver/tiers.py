"""RECEIVER_RETENTION: the tiered retention rule, parsed strictly, and its arithmetic (pure: no I/O, no clock).

``7d:all,90d:1m,1y:1h`` reads "keep every snapshot until 7 days old, then the first of each UTC clock minute
per job until 90 days, then the first of each UTC clock hour until a year, then nothing". Each tier is
``AGE:KEEP``:

- AGE: a positive whole number and a unit ``s`` ``m`` ``h`` ``d`` ``w`` ``y`` (``m`` is minutes, a year is
  365 days), at most ``1000y``; strictly ascending from tier to tier.
- KEEP: ``all`` (only in the first tier: what an earlier tier thinned cannot come back), or a resolution:
  a whole number and ``s`` ``m`` ``h`` ``d`` that divides one day (so clock buckets never straddle a UTC day,
  the unit partitions are dropped in), at most ``1d``, and a multiple of the previous tier's resolution (a
  clock hour is then made of whole clock minutes, and the first of an hour is also the first of its minute,
  so thinning twice keeps what thinning once would).

Where tiers meet, the boundary is rounded down to the older tier's resolution, and the end of the last tier
down to a UTC day: whole days go at once (as partitions on PostgreSQL), and every window holds whole clock
buckets, so a second prune at the same moment finds nothing more, on every backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DAY_MS = 86_400_000
# The oldest age any retention setting may name: a thousand years keeps everything a deployment holds, and
# "now minus the age" stays a date Python can print (two thousand years back does not).
MAX_AGE_MS = 1000 * 365 * DAY_MS
_AGE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_RES_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RetentionError(ValueError):
    """RECEIVER_RETENTION cannot be used; the message says which tier and why."""


@dataclass(frozen=True)
class Tier:
    age_ms: int  # the tier ends at this age
    resolution_ms: int | None  # None: keep all
    text: str  # as written, for messages and summaries


@dataclass(frozen=True)
class Window:
    """Snapshots captured in [lo_ms, hi_ms) keep the first of each ``resolution_ms`` clock bucket per job."""

    tier: Tier
    lo_ms: int
    hi_ms: int
    resolution_ms: int


@dataclass(frozen=True)
class Plan:
    windows: tuple[Window, ...]  # thinning, newest first; empty windows left out
    cutoff_ms: int  # everything captured before this goes (a UTC midnight)


def _amount(text: str, units: dict[str, int], what: str, tier: str, most_ms: int) -> int:
    # [0-9], not \d: \d also matches other scripts' digits, which int() would then read.
    m = re.fullmatch(r"([0-9]+)([a-z])", text)
    if m is None or m.group(2) not in units:
        raise RetentionError(f"RECEIVER_RETENTION tier {tier!r}: {what} must be a whole number and one of "
                             f"{' '.join(units)} (like 90d or 1h), got {text!r}")
    digits = m.group(1).lstrip("0") or "0"
    # Compared as text first: int() refuses numbers of over 4,300 digits with a ValueError of its own.
    n = int(digits) if len(digits) <= 15 else most_ms + 1
    if n <= 0:
        raise RetentionError(f"RECEIVER_RETENTION tier {tier!r}: {what} must be positive, got {text!r}")
    if n * units[m.group(2)] * 1000 > most_ms:
        raise RetentionError(f"RECEIVER_RETENTION tier {tier!r}: {what} must be at most "
                             f"{_largest(most_ms, units)}, got {text!r}")
    return n * units[m.group(2)] * 1000


def _largest(most_ms: int, units: dict[str, int]) -> str:
    """``most_ms`` written in the largest unit that divides it (1000y, 1d)."""
    unit, size = max(((u, v) for u, v in units.items() if most_ms % (v * 1000) == 0), key=lambda uv: uv[1])
    return f"{most_ms // (size * 1000)}{unit}"


def parse_retention(text: str) -> tuple[Tier, ...]:
    """The tiers of ``text``, oldest last; () for an empty value (keep everything)."""
    raw = text.strip().lower()
    if not raw:
        return ()
    tiers: list[Tier] = []
    for i, item in enumerate(p.strip() for p in raw.split(",")):
        if not item:
            raise RetentionError(f"RECEIVER_RETENTION has an empty tier in {text!r} (expected AGE:KEEP,...)")
        age_text, sep, keep = item.partition(":")
        if not sep:
            raise RetentionError(f"RECEIVER_RETENTION tier {item!r}: expected AGE:KEEP, like 7d:all or 90d:1m")
        age = _amount(age_text.strip(), _AGE_UNITS_S, "the age", item, MAX_AGE_MS)
        keep = keep.strip()
        resolution: int | None
        if keep == "all":
            if i > 0:
                raise RetentionError(f"RECEIVER_RETENTION tier {item!r}: `all` only in the first tier (what "
                                     "an earlier tier thinned cannot come back)")
            resolution = None
        else:
            resolution = _amount(keep, _RES_UNITS_S, "what to keep (`all` or a resolution)", item, DAY_MS)
            if DAY_MS % resolution:
                raise RetentionError(f"RECEIVER_RETENTION tier {item!r}: the resolution must divide one day "
                                     f"(like 1m, 5m, 1h, 6h, 1d), got {keep!r}")
        if tiers:
            prev = tiers[-1]
            if age <= prev.age_ms:
                raise RetentionError(f"RECEIVER_RETENTION tier {item!r}: ages must ascend; it comes after "
                                     f"{prev.text!r}")
            if prev.resolution_ms is not None and resolution is not None and resolution % prev.resolution_ms:
                raise RetentionError(f"RECEIVER_RETENTION tier {item!r}: the resolution must be a multiple of "
                                     f"the previous tier's ({prev.text!r})")
        tiers.append(Tier(age, resolution, item))
    return tuple(tiers)


def floor_to(ms: int, step: int) -> int:
    return ms // step * step


def plan(tiers: tuple[Tier, ...], now_ms: int) -> Plan:
    """What a prune at ``now_ms`` does: the thinning windows and the cutoff (see the module docstring)."""
    if not tiers:
        raise ValueError("no tiers: nothing to plan")
    bounds: list[int] = []  # bounds[k]: where tier k ends (older side)
    for k, tier in enumerate(tiers):
        if k == len(tiers) - 1:
            bounds.append(floor_to(now_ms - tier.age_ms, DAY_MS))
        else:
            bounds.append(floor_to(now_ms - tier.age_ms, tiers[k + 1].resolution_ms or 1))
    windows = []
    for k, tier in enumerate(tiers):
        if tier.resolution_ms is None:
            continue
        hi = floor_to(now_ms, tier.resolution_ms) if k == 0 else bounds[k - 1]
        lo = bounds[k]
        if lo < hi:
            windows.append(Window(tier, lo, hi, tier.resolution_ms))
    return Plan(tuple(windows), bounds[-1])


def kept(rows: Iterable[tuple[int, str, int]], p: Plan) -> set[int]:
    """The ids of ``(id, job_id, captured_at_ms)`` rows that a prune with plan ``p`` keeps: the reference the
    SQL is tested against."""
    out: set[int] = set()
    first: dict[tuple[str, int, int], tuple[int, int]] = {}
    for sid, job, at in rows:
        if at < p.cutoff_ms:
            continue
        window = next((w for w in p.windows if w.lo_ms <= at < w.hi_ms), None)
        if window is None:
            out.add(sid)
            continue
        key = (job, window.resolution_ms, floor_to(at, window.resolution_ms))
        if key not in first or (at, sid) < first[key]:
            first[key] = (at, sid)
    out.update(sid for _, sid in first.values())
    return out


def day_of(ms: int) -> int:
    """The UTC midnight (ms) of the day ``ms`` falls in."""
    return floor_to(ms, DAY_MS)
