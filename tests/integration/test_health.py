"""Stream health on constructed histories (pure), and GET /v1/jobs/<id>/health through the pipeline."""

from __future__ import annotations

import random

from receiver.media.health import Frame, Thresholds, assess, current_status
from receiver.sim.frames import make_frame
from receiver.timeutil import now_ms
from receiver.worker.dispatch import drain
from tests.support.builders import JOB, callback_body, put_snapshot

S = 5000  # a 5-second TimeInterval
T0 = 1_796_212_800_000
T = Thresholds()  # the defaults: gap 1.5 intervals, stale 4, frozen 3 bits x 6 frames, black luma 20 spread 10


def pic(i: int) -> int:
    return random.Random(i).getrandbits(64)  # distinct pictures: ~32 bits apart


def live(n: int, start: int = T0, step: int = S) -> list[Frame]:
    # A moving scene: bright, textured, every hash far from the previous one.
    return [Frame(start + i * step, 120.0, 30.0, pic(start + i)) for i in range(n)]


def run(frames: list[Frame], until: int | None = None, **kw: int) -> object:
    until = until if until is not None else frames[-1].captured_at_ms + 1
    return assess(frames, interval_ms=S, since_ms=T0, until_ms=until, now_ms=until, **kw)  # type: ignore[arg-type]


def test_steady_stream_is_ok_and_counts_expected_vs_seen():
    h = run(live(12), until=T0 + 60_000)
    assert (h.status, h.expected, h.seen) == ("ok", 12, 12)
    assert h.gaps == h.frozen == h.black == []


def test_drift_within_tolerance_is_not_a_gap():
    # Keyframe-aligned capture: spacing wanders from 0.6 to 1.4 intervals, never a missing frame.
    times = [T0]
    for d in (7000, 3000, 6900, 3100, 7000, 5000, 3200, 6800):
        times.append(times[-1] + d)
    frames = [Frame(t, 120.0, 30.0, pic(i)) for i, t in enumerate(times)]
    h = run(frames)
    assert h.gaps == [] and h.status == "ok"


def test_a_gap_is_found_with_the_missing_count():
    frames = live(5) + live(5, start=T0 + 4 * S + 30_000)  # 30 s between two frames: 5 missing
    h = run(frames, until=frames[-1].captured_at_ms + 20 * S)  # long after, the stream recovered
    frames += live(20, start=frames[-1].captured_at_ms + S)
    h = run(frames)
    [gap] = h.gaps
    assert (gap.start_ms, gap.end_ms, gap.snapshots) == (T0 + 4 * S, T0 + 4 * S + 30_000, 5)
    assert h.status == "ok"  # recovered more than `stale_factor` intervals ago


def test_status_is_gap_right_after_a_gap_and_stale_during_silence():
    frames = live(5) + live(2, start=T0 + 4 * S + 30_000)
    assert run(frames).status == "gap"
    quiet = live(5)
    h = run(quiet, until=quiet[-1].captured_at_ms + 5 * S)
    assert h.status == "stale"
    assert h.gaps[-1].start_ms == quiet[-1].captured_at_ms  # the open gap reaches the window's end
    assert run([], until=T0 + 60_000).status == "stale"


def test_frozen_run_needs_min_frames_within_hamming():
    moving = live(4)
    same = [Frame(T0 + (4 + i) * S, 120.0, 30.0, 0xABCDEF0123 ^ (1 << (i % 3))) for i in range(7)]  # <= 2 bits
    h = run(moving + same)
    [fr] = h.frozen
    assert (fr.start_ms, fr.end_ms, fr.snapshots) == (same[0].captured_at_ms, same[-1].captured_at_ms, 7)
    assert h.status == "frozen"
    short = run(moving + same[:5] + live(3, start=T0 + 9 * S))
    assert short.frozen == [] and short.status == "ok"


def test_black_run_and_black_frames_are_not_also_frozen():
    black = [Frame(T0 + (3 + i) * S, 7.0, 2.0, 0) for i in range(8)]
    h = run(live(3) + black)
    [b] = h.black
    assert (b.start_ms, b.end_ms, b.snapshots) == (black[0].captured_at_ms, black[-1].captured_at_ms, 8)
    assert h.frozen == [] and h.status == "black"
    dark_scene = [Frame(T0 + i * S, 18.0, 25.0, pic(i)) for i in range(4)]  # night, but textured
    assert run(dark_scene).black == []


def test_thresholds_are_configurable():
    frames = live(3) + live(3, start=T0 + 2 * S + 9000)  # a 9 s spacing: 1.8 intervals
    assert len(run(frames).gaps) == 1
    assert run(frames, thresholds=Thresholds(gap_factor=2.0)).gaps == []  # type: ignore[arg-type]


def test_frames_without_signals_count_as_seen_only():
    frames = [Frame(T0 + i * S) for i in range(8)]
    h = run(frames)
    assert (h.seen, h.status, h.frozen, h.black) == (8, "ok", [], [])


def test_current_status_from_newest_frames():
    frames = live(10)
    now = frames[-1].captured_at_ms + 1000
    assert current_status(frames[::-1], S, now, T) == "ok"
    assert current_status(frames[::-1], S, now + 60_000, T) == "stale"
    assert current_status([], S, now, T) == "stale"


def _ingest(client, svc, fake_oss, fake_ice, times: list[int], kind: str = "photo", seed: int | None = None) -> None:
    for i, ms in enumerate(times):
        data = make_frame(seed if seed is not None else ms % 997 + i, width=320, height=180, kind=kind)
        key = put_snapshot(fake_oss, fake_ice, ms, data)
        assert client.post("/callbacks/live-snapshot", data=callback_body(key, ms)).status_code == 200
    drain(svc)


def test_health_endpoint_reports_gap_frozen_black(client, svc, fake_oss, fake_ice):
    t = base = (now_ms() // 1000 - 600) * 1000  # ten minutes ago: the window has ended, the job is stale now
    live_ts = [t + i * S for i in range(3)]
    gap_ts = [t + 3 * S + 30_000 + i * S for i in range(2)]
    frozen_ts = [gap_ts[-1] + (i + 1) * S for i in range(6)]
    black_ts = [frozen_ts[-1] + (i + 1) * S for i in range(3)]
    _ingest(client, svc, fake_oss, fake_ice, live_ts + gap_ts)
    _ingest(client, svc, fake_oss, fake_ice, frozen_ts, seed=42)
    _ingest(client, svc, fake_oss, fake_ice, black_ts, kind="black")
    until = black_ts[-1] + 1
    body = client.get(f"/v1/jobs/{JOB}/health?since={base}&until={until}").get_json()
    assert body["job_id"] == JOB and body["interval_seconds"] == 5
    assert body["seen"] == 14 and body["status"] == "black"
    assert [(g["start_ms"], g["end_ms"], g["snapshots"]) for g in body["gaps"]] == [(live_ts[-1], gap_ts[0], 6)]
    [fr] = body["frozen"]
    assert (fr["start_ms"], fr["end_ms"], fr["snapshots"]) == (frozen_ts[0], frozen_ts[-1], 6)
    [bl] = body["black"]
    assert bl["start"].endswith("Z") and bl["snapshots"] == 3
    # /v1/jobs items carry the status now (long after: stale)
    items = client.get("/v1/jobs").get_json()["items"]
    assert [i["health"] for i in items if i["job_id"] == JOB] == ["stale"]
    # each snapshot carries its placeholder
    snap = client.get(f"/v1/jobs/{JOB}/snapshots?limit=1").get_json()["items"][0]
    assert snap["placeholder"]["blurhash"].startswith("L")


def test_health_endpoint_errors(client):
    assert client.get("/v1/jobs/nope/health").status_code == 404
    assert client.get(f"/v1/jobs/{JOB}/health?since=2000&until=1000").status_code == 400


def test_expected_counts_the_slot_at_the_start_of_a_partial_interval():
    # Five frames 5 s apart, asked 0.5 s after the last one: five slots, not four.
    h = run(live(5), until=T0 + 20_500)
    assert (h.expected, h.seen) == (5, 5)


def test_health_at_a_past_moment_inside_a_silence_later_snapshots_ended_is_a_gap(client, svc):
    # Issue 14 item 8: until = 30 s into a 60 s silence two hours ago answered `stale`; product.md 3.2: a
    # silence that later snapshots end is a `gap`, whatever the window.
    from tests.support.api import add_job, add_snapshot

    add_job(svc)  # TimeInterval 5 s
    silence_start = (now_ms() // 1000 - 2 * 3600) * 1000
    before = [silence_start - i * S for i in range(12)][::-1]
    after = [silence_start + 60_000 + i * S for i in range(12)]
    for ms in before + after:
        add_snapshot(svc, ms)
    until = silence_start + 30_000
    for query in (f"until={until}", f"until={until}&since={until - 10_000}", f"until={until}&since={before[0]}"):
        body = client.get(f"/v1/jobs/{JOB}/health?{query}").get_json()
        assert body["status"] == "gap", query
        assert (body["gaps"][-1]["start_ms"], body["gaps"][-1]["end_ms"]) == (silence_start, after[0]), query
    # The same moment with nothing after it (the stream is silent now) is stale, as before.
    from receiver.db.models import Snapshot

    with svc.sessions.begin() as s:
        s.query(Snapshot).filter(Snapshot.captured_at_ms > silence_start).delete()
    assert client.get(f"/v1/jobs/{JOB}/health?until={until}").get_json()["status"] == "stale"
