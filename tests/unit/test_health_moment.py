"""Health at a past moment (issue 14 item 8), pure: a silence that later frames ended is a gap, never stale,
whatever window is asked; a silence nothing has ended yet is stale, as before."""

from __future__ import annotations

import random

from receiver.media.health import Frame, Thresholds, assess, current_status

S = 5000  # a 5-second TimeInterval
T0 = 1_796_212_800_000
T = Thresholds()  # gap 1.5 intervals, stale 4


def live(n: int, start: int) -> list[Frame]:
    return [Frame(start + i * S, 120.0, 30.0, random.Random(start + i).getrandbits(64)) for i in range(n)]


BEFORE = live(12, T0)  # one minute of frames
SILENCE_START = BEFORE[-1].captured_at_ms
RESUMED = SILENCE_START + 60_000  # a 60 s silence, then frames again
AFTER = live(12, RESUMED)
NOW = AFTER[-1].captured_at_ms + 2 * 3600 * 1000  # asked two hours later


def at(until: int, since: int = T0, now: int = NOW, **kw: int | None) -> object:
    frames = [f for f in BEFORE + AFTER if since <= f.captured_at_ms < until]
    return assess(frames, interval_ms=S, since_ms=since, until_ms=until, now_ms=now, **kw)  # type: ignore[arg-type]


def test_thirty_seconds_into_a_sixty_second_silence_that_later_frames_ended_is_a_gap():
    until = SILENCE_START + 30_000
    h = at(until, next_ms=RESUMED)
    assert h.status == "gap"  # type: ignore[attr-defined]
    # The gap is the whole silence, reaching the frame that ended it (beyond the window, like previous_ms).
    assert [(g.start_ms, g.end_ms, g.snapshots) for g in h.gaps] == [(SILENCE_START, RESUMED, 11)]  # type: ignore[attr-defined]


def test_the_window_does_not_matter():
    until = SILENCE_START + 30_000
    for since in (T0, SILENCE_START - S, SILENCE_START + 1, until - 1000, until - 3600 * 1000):
        h = at(until, since=since, next_ms=RESUMED,
               previous_ms=max((f.captured_at_ms for f in BEFORE if f.captured_at_ms < since), default=None))
        assert h.status == "gap", since  # type: ignore[attr-defined]
        assert h.gaps[-1].end_ms == RESUMED  # type: ignore[attr-defined]


def test_a_silence_nothing_ended_is_still_stale():
    until = SILENCE_START + 30_000
    h = at(until, now=until)  # asked live: nothing after until exists (yet)
    assert h.status == "stale"  # type: ignore[attr-defined]
    assert h.gaps[-1].start_ms == SILENCE_START and h.gaps[-1].end_ms == until  # type: ignore[attr-defined]
    # Asked later, and still nothing since: stale (the stream is silent now).
    assert at(until, now=until + 3600 * 1000).status == "stale"  # type: ignore[attr-defined]


def test_a_regular_spacing_around_until_is_not_a_gap():
    # until between two frames one interval apart: the later frame ends no silence worth a gap.
    until = BEFORE[5].captured_at_ms + 2000
    h = at(until, next_ms=BEFORE[6].captured_at_ms)
    assert h.status == "ok" and h.gaps == []  # type: ignore[attr-defined]


def test_early_in_a_silence_that_later_frames_ended_is_a_gap_too():
    # Hindsight: the moment lies inside a silence ICE never filled, even though no frame was due yet.
    until = SILENCE_START + 2000
    assert at(until, next_ms=RESUMED).status == "gap"  # type: ignore[attr-defined]


def test_before_the_jobs_first_frame_with_frames_later_is_not_stale():
    h = at(T0 - 1000, since=T0 - 3600 * 1000, next_ms=T0, first_ever_ms=T0)
    assert h.status == "gap" and h.expected == 0 and h.seen == 0  # type: ignore[attr-defined]


def test_a_next_frame_before_until_is_ignored():
    # next_ms is "at or after until" by contract; a caller passing an older one does not change the answer.
    until = SILENCE_START + 30_000
    assert at(until, now=until, next_ms=SILENCE_START).status == "stale"  # type: ignore[attr-defined]


def test_current_status_treats_frames_stamped_after_now_as_later_frames():
    frames = BEFORE + AFTER[:1]
    # "now" 30 s into the silence, while a frame stamped after it is already indexed (a clock ahead of ours).
    now = SILENCE_START + 30_000
    assert current_status(frames[::-1], S, now, T) == "gap"
    assert current_status(BEFORE[::-1], S, now, T) == "stale"
    assert current_status(AFTER[:1], S, T0, T) == "gap"  # only later frames: the stream is not silent
    assert current_status([], S, now, T) == "stale"
