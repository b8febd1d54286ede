"""Stream health from a snapshot history: pure functions, no database, no clock (the caller passes now).

Given the frames of a window (time, luma, spread, dHash) and the job's interval:

- **gaps**: consecutive frames further apart than ``gap_factor`` intervals; a run's ``snapshots`` is the
  estimated number missing. A silence at the end of the window longer than ``stale_factor`` intervals is an
  open gap ending at the window's end.
- **black runs**: frames with mean luma below ``black_luma`` and spread below ``black_spread``.
- **frozen runs**: at least ``frozen_min_frames`` consecutive non-black frames whose neighbours' dHashes
  differ by at most ``frozen_hamming`` bits. Black frames break frozen runs (they all hash alike; they are
  reported as black, not twice).
- **status** at the window's end, most severe first: ``stale`` (nothing for ``stale_factor`` intervals, and
  nothing since), ``gap`` (a gap is open or ended within the last ``stale_factor`` intervals), ``black`` (the
  newest frame is black), ``frozen`` (the newest frame ends a frozen run), else ``ok``.
- **a past moment**: the window's end may lie in the past, inside a silence that later frames ended. That
  silence is a gap whatever the window (product.md 3.2), never ``stale``: the caller passes the first frame at
  or after the window's end (``next_ms``), and the gap reaches it, as a gap spanning the window's start reaches
  back to the frame before it (``previous_ms``).

Frames without signals (indexed before the signals existed and not backfilled) count as seen and for
gaps, and break black and frozen runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from receiver.config import Settings
from receiver.media.signals import hamming
from receiver.timeutil import ms_to_iso

STATUSES = ("ok", "gap", "frozen", "black", "stale")


@dataclass(frozen=True)
class Frame:
    captured_at_ms: int
    luma: float | None = None
    spread: float | None = None
    dhash: int | None = None  # unsigned


# The defaults live in Settings (documented with their env variables); read them, do not restate them.
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings)}


@dataclass(frozen=True)
class Thresholds:
    gap_factor: float = _DEFAULTS["health_gap_factor"]
    stale_factor: float = _DEFAULTS["health_stale_factor"]
    frozen_hamming: int = _DEFAULTS["health_frozen_hamming"]
    frozen_min_frames: int = _DEFAULTS["health_frozen_min_frames"]
    black_luma: float = _DEFAULTS["health_black_luma"]
    black_spread: float = _DEFAULTS["health_black_spread"]

    @classmethod
    def from_settings(cls, s: Settings) -> Thresholds:
        return cls(s.health_gap_factor, s.health_stale_factor, s.health_frozen_hamming,
                   s.health_frozen_min_frames, s.health_black_luma, s.health_black_spread)


@dataclass(frozen=True)
class Run:
    start_ms: int
    end_ms: int
    snapshots: int

    def to_json(self) -> dict[str, Any]:
        return {"start": ms_to_iso(self.start_ms), "end": ms_to_iso(self.end_ms),
                "start_ms": self.start_ms, "end_ms": self.end_ms, "snapshots": self.snapshots}


@dataclass(frozen=True)
class Health:
    expected: int
    seen: int
    status: str
    gaps: list[Run] = field(default_factory=list)
    frozen: list[Run] = field(default_factory=list)
    black: list[Run] = field(default_factory=list)


def is_black(f: Frame, t: Thresholds) -> bool:
    return f.luma is not None and f.spread is not None and f.luma < t.black_luma and f.spread < t.black_spread


def find_gaps(times: Sequence[int], interval_ms: int, t: Thresholds) -> list[Run]:
    """Gaps between consecutive times (ascending)."""
    limit = t.gap_factor * interval_ms
    out = []
    for a, b in zip(times, times[1:], strict=False):
        if b - a > limit:
            out.append(Run(a, b, max(1, round((b - a) / interval_ms) - 1)))
    return out


def find_black(frames: Sequence[Frame], t: Thresholds) -> list[Run]:
    runs: list[Run] = []
    start: int | None = None
    for i, f in enumerate(frames):
        if is_black(f, t):
            if start is None:
                start = i
            if i == len(frames) - 1 or not is_black(frames[i + 1], t):
                runs.append(Run(frames[start].captured_at_ms, f.captured_at_ms, i - start + 1))
                start = None
    return runs


def find_frozen(frames: Sequence[Frame], t: Thresholds) -> list[Run]:
    runs: list[Run] = []
    start = 0
    for i in range(1, len(frames) + 1):
        same = i < len(frames) and _same_picture(frames[i - 1], frames[i], t)
        if not same:
            if i - start >= t.frozen_min_frames:
                runs.append(Run(frames[start].captured_at_ms, frames[i - 1].captured_at_ms, i - start))
            start = i
    return runs


def _same_picture(a: Frame, b: Frame, t: Thresholds) -> bool:
    if a.dhash is None or b.dhash is None or is_black(a, t) or is_black(b, t):
        return False
    return hamming(a.dhash, b.dhash) <= t.frozen_hamming


def expected_count(since_ms: int, end_ms: int, interval_ms: int) -> int:
    """Capture slots in [since, end): one at since, then every interval (so a partial last interval counts:
    frames at 0, 5, 10, 15, 20 s are 5 expected by 20.5 s, not 4)."""
    if interval_ms <= 0 or end_ms <= since_ms:
        return 0
    return -(-(end_ms - since_ms) // interval_ms)


def assess(
    frames: Sequence[Frame],
    *,
    interval_ms: int,
    since_ms: int,
    until_ms: int,
    now_ms: int,
    thresholds: Thresholds | None = None,
    previous_ms: int | None = None,
    first_ever_ms: int | None = None,
    next_ms: int | None = None,
) -> Health:
    """Health of ``frames`` (ascending, all in [since, until)).

    ``previous_ms`` is the newest frame before ``since`` (so a gap spanning ``since`` is found);
    ``first_ever_ms`` the job's oldest frame (a job that began mid-window is not "missing" the time before);
    ``next_ms`` the oldest frame at or after ``until``, if any (so a silence that later frames ended is a
    gap, not ``stale``: the stream was not silent *now*).
    """
    t = thresholds or Thresholds()
    interval_ms = max(1, interval_ms)
    end = min(until_ms, now_ms)
    start = max(since_ms, first_ever_ms) if first_ever_ms is not None else since_ms
    times = [f.captured_at_ms for f in frames]
    gaps = find_gaps(([previous_ms] if previous_ms is not None else []) + times, interval_ms, t)
    newest = times[-1] if times else previous_ms
    silence = end - newest if newest is not None else None
    stale_after = t.stale_factor * interval_ms
    later = next_ms if next_ms is not None and next_ms >= until_ms else None
    spanning: Run | None = None  # the gap ``until`` lies in, ended by a later frame
    if later is not None and newest is not None:
        spanning = next(iter(find_gaps([newest, later], interval_ms, t)), None)
        if spanning is not None:
            gaps.append(spanning)
    elif newest is not None and silence is not None and silence > stale_after:
        gaps.append(Run(newest, end, max(1, silence // interval_ms)))
    black = find_black(frames, t)
    frozen = find_frozen(frames, t)
    if later is not None and (newest is None or spanning is not None):
        # Inside a silence later frames ended (or before the job's first frame): the stream came back.
        status = "gap"
    elif silence is None or silence > stale_after:
        status = "stale"
    elif silence > t.gap_factor * interval_ms or (gaps and end - gaps[-1].end_ms <= stale_after):
        status = "gap"
    elif frames and black and black[-1].end_ms == times[-1]:
        status = "black"
    elif frames and frozen and frozen[-1].end_ms == times[-1]:
        status = "frozen"
    else:
        status = "ok"
    return Health(expected=expected_count(start, end, interval_ms), seen=len(frames), status=status,
                  gaps=gaps, frozen=frozen, black=black)


def current_status(newest_first: Sequence[Frame], interval_ms: int, now_ms: int, t: Thresholds) -> str:
    """The status at ``now`` from a job's newest frames (enough: ``frozen_min_frames`` + 1).

    Frames stamped at or after ``now`` (a capture clock ahead of ours) are not in the window; they are later
    frames, which end any silence before them (see ``assess``'s ``next_ms``).
    """
    frames = [f for f in reversed(newest_first) if f.captured_at_ms < now_ms]
    later = [f.captured_at_ms for f in newest_first if f.captured_at_ms >= now_ms]
    if not frames and not later:
        return "stale"
    lookback = int(t.stale_factor * interval_ms)
    since = min(frames[0].captured_at_ms, now_ms - lookback) if frames else now_ms - lookback
    return assess(frames, interval_ms=interval_ms, since_ms=since, until_ms=now_ms, now_ms=now_ms, thresholds=t,
                  next_ms=min(later) if later else None).status
