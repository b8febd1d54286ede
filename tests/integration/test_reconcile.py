"""The reconciler against the fake ICE and OSS: nothing ICE listed is missing, nothing is indexed twice."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import func, select

from receiver.adapters.base import parse_ice_time
from receiver.config import Settings
from receiver.db.models import Event, Job, Snapshot
from receiver.ops.reconcile import DAY_MS, Reconciler
from receiver.ops.replay import run_events
from receiver.ops.tracking import discover, points_here, track, untrack
from receiver.services import Services
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame
from receiver.timeutil import ms_to_iso, now_ms
from receiver.worker.dispatch import drain
from tests.support.builders import BUCKET, JOB, Cli, callback_body, put_snapshot

SMALL = make_frame(seed=3, width=320, height=180)
STEP_MS = 18 * 60_000 + 7  # 200 files span ~2.5 days, so the sweep crosses three day windows


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(reconcile_lookback_days=3, thumbnail_widths=(160,), workers=4)


def populate(oss: FakeOss, ice: FakeIce, n: int, step_ms: int = STEP_MS, end_ms: int | None = None) -> list[str]:
    """n sequence files ending a minute ago (ICE and OSS only: no callbacks)."""
    last = (end_ms or now_ms() - 60_000)
    return [put_snapshot(oss, ice, last - (n - 1 - i) * step_ms, SMALL) for i in range(n)]


def reconciler(svc: Services, sleeps: list[float] | None = None, **kw: object) -> Reconciler:
    log = sleeps if sleeps is not None else []
    return Reconciler(svc, execute=lambda ids: run_events(svc, ids), sleep=log.append, **kw)  # type: ignore[arg-type]


def snapshot_objects(svc: Services) -> Counter[str]:
    with svc.sessions() as s:
        return Counter(s.execute(select(Snapshot.oss_object)).scalars())


def event_count(svc: Services, **where: object) -> int:
    q = select(func.count()).select_from(Event)
    for k, v in where.items():
        q = q.where(getattr(Event, k) == v)
    with svc.sessions() as s:
        return s.execute(q).scalar_one()


def gets(oss: FakeOss) -> int:
    return sum(1 for r in oss.fetched(BUCKET) if r["method"] == "GET")


def test_indexes_every_file_exactly_once_then_adds_nothing(svc, fake_ice, fake_oss):
    keys = populate(fake_oss, fake_ice, 200)
    track(svc, JOB)
    tally = reconciler(svc).run()
    assert (tally.seen, tally.new, tally.indexed, tally.failed, tally.errors) == (200, 200, 0, 0, [])
    assert snapshot_objects(svc) == Counter(keys)
    assert event_count(svc, origin="reconcile", status="done") == 200
    assert gets(fake_oss) == 200
    # Every listing respected ICE's rules: windows of at most a day, pages of 100.
    listings = [r["params"] for r in fake_ice.requests if r["action"] == "ListLiveSnapshotFiles"]
    assert {p["Limit"] for p in listings} == {"100"} and len(listings) >= 3
    with svc.sessions() as s:
        cursor = s.get(Job, JOB).reconciled_until_ms
    assert cursor is not None and cursor > max(int(k.rsplit("/", 1)[1][:-4]) for k in keys)

    again = reconciler(svc).run()
    assert again.new == 0 and again.failed == 0
    assert snapshot_objects(svc) == Counter(keys) and gets(fake_oss) == 200
    assert event_count(svc) == 200


def test_resumes_from_its_cursor_after_an_interruption(svc, fake_ice, fake_oss):
    keys = populate(fake_oss, fake_ice, 200)
    track(svc, JOB)
    windows: list[int] = []

    def break_ice_after_first_window(span_ms: int) -> None:
        windows.append(span_ms)
        if len(windows) == 1:
            fake_ice.fail_next("ListLiveSnapshotFiles", 8, "500")  # more than the reconciler's patience

    sleeps: list[float] = []
    first = reconciler(svc, sleeps, progress=break_ice_after_first_window).run()
    assert len(first.errors) == 1 and "ListLiveSnapshotFiles" in first.errors[0]
    assert len(sleeps) == 7  # it waited between tries before giving up
    assert 0 < first.new < 200
    with svc.sessions() as s:
        cursor = s.get(Job, JOB).reconciled_until_ms
    assert cursor is not None
    done_before = snapshot_objects(svc)
    calls_before = len(fake_ice.requests)

    second = reconciler(svc).run()
    assert second.errors == [] and second.new == 200 - first.new
    assert snapshot_objects(svc) == Counter(keys)  # each exactly once
    assert gets(fake_oss) == 200
    resumed = [r["params"] for r in fake_ice.requests[calls_before:] if r["action"] == "ListLiveSnapshotFiles"]
    assert len(done_before) == first.new
    assert parse_ice_time(resumed[0]["StartTime"]) >= cursor - 5 * 60_000 - 1000


def test_throttling_slows_the_sweep_down_instead_of_failing_it(svc, fake_ice, fake_oss):
    keys = populate(fake_oss, fake_ice, 120, step_ms=60_000)
    track(svc, JOB)
    fake_ice.fail_next("ListLiveSnapshotFiles", 3, "throttle")  # x-acs-retry-after: 100 ms
    sleeps: list[float] = []
    tally = reconciler(svc, sleeps).run()
    assert tally.errors == [] and tally.new == 120
    assert len(sleeps) == 3 and all(s >= 0.1 for s in sleeps)
    assert snapshot_objects(svc) == Counter(keys)


def test_overwrite_entries_only_the_newest_is_processed(svc, fake_ice, fake_oss):
    t0 = now_ms() - 10 * 60_000
    for i in range(5):
        for f in fake_ice.take_snapshot(JOB, t0 + i * 60_000):
            fake_oss.put(BUCKET, f["OssObject"], make_frame(seed=i, width=320, height=180))
    track(svc, JOB)
    tally = reconciler(svc).run()
    assert tally.seen == 6 and tally.new == 6  # 5 sequence files + the newest overwrite listing
    kinds = Counter()
    with svc.sessions() as s:
        for snap in s.execute(select(Snapshot)).scalars():
            kinds[snap.kind] += 1
    assert kinds == {"sequence": 5, "overwrite": 1}
    assert event_count(svc, is_overlay=True) == 1
    assert reconciler(svc).run().new == 0


@pytest.mark.parametrize("with_timestamp", [True, False])
def test_callbacks_racing_the_reconciler_give_one_snapshot_per_file(client, svc, fake_ice, fake_oss,
                                                                     with_timestamp):
    keys = populate(fake_oss, fake_ice, 60, step_ms=30_000)
    track(svc, JOB)
    svc.dispatcher.start()

    def post_callbacks() -> None:
        for key in keys:
            ms = int(key.rsplit("/", 1)[1][:-4])
            assert client.post("/callbacks/live-snapshot",
                               data=callback_body(key, ms if with_timestamp else None)).status_code == 200

    poster = threading.Thread(target=post_callbacks)
    poster.start()
    tally = reconciler(svc).run()
    poster.join()
    from receiver.worker.dispatch import wait_idle

    assert wait_idle(svc, 20)
    assert tally.errors == [] and tally.seen == 60
    assert snapshot_objects(svc) == Counter(keys)
    if with_timestamp:
        # Same identity as the listing: a callback and the reconciler share one event per file.
        assert event_count(svc) == 60
    assert event_count(svc, status="done") == event_count(svc)


def test_a_failed_callback_is_requeued_by_the_listing(client, svc, fake_ice, fake_oss):
    [key] = populate(fake_oss, fake_ice, 1)
    ms = int(key.rsplit("/", 1)[1][:-4])
    fake_oss.delete(BUCKET, key)
    assert client.post("/callbacks/live-snapshot", data=callback_body(key, ms)).status_code == 200
    from receiver.worker.dispatch import drain

    drain(svc)
    assert event_count(svc, status="failed") == 1
    fake_oss.put(BUCKET, key, SMALL)  # OSS caught up
    tally = reconciler(svc).run([JOB])
    assert tally.new == 1 and snapshot_objects(svc) == Counter([key])
    with svc.sessions() as s:
        ev = s.execute(select(Event)).scalar_one()
    assert (ev.status, ev.origin) == ("done", "reconcile")


def test_explicit_range_does_not_move_the_cursor(svc, fake_ice, fake_oss):
    populate(fake_oss, fake_ice, 10, step_ms=DAY_MS // 4)
    tally = reconciler(svc).run([JOB], since_ms=now_ms() - 3 * DAY_MS, until_ms=now_ms() - DAY_MS)
    assert tally.seen == 6  # files 1 to 2.25 days old, every 6 hours
    with svc.sessions() as s:
        job = s.get(Job, JOB)
        assert job is not None and job.reconciled_until_ms is None


def test_track_untrack_and_discovery(svc, fake_ice):
    fake_ice.add_job("ours", callback_url="https://recv.example.com/callbacks/live-snapshot/tok")
    fake_ice.add_job("theirs", callback_url="https://other.example.com/callbacks/live-snapshot")
    fake_ice.add_job("paused", status="paused", callback_url="https://recv.example.com/callbacks/live-snapshot")
    assert discover(svc.__class__(**{**svc.__dict__, "settings": svc.settings.with_(public_url=None)})) == []
    svc2 = svc.__class__(**{**svc.__dict__, "settings": svc.settings.with_(public_url="https://RECV.example.com/")})
    ignored: set[str] = set()
    assert discover(svc2, ignored) == ["ours"]
    assert "theirs" in ignored and discover(svc2, ignored) == []
    assert untrack(svc, "ours") and not untrack(svc, "never-seen")
    assert Reconciler(svc).tracked_jobs() == []
    track(svc, JOB)
    assert Reconciler(svc).tracked_jobs() == [JOB]


@pytest.mark.parametrize(("url", "ok"), [
    ("https://recv.example.com/callbacks/live-snapshot/x", True),
    ("https://recv.example.com", True),
    ("http://recv.example.com/callbacks", False),
    ("https://recv.example.com.evil.net/callbacks", False),
    ("", False),
])
def test_points_here(url, ok):
    assert points_here(url, "https://recv.example.com/") is ok


def cli_settings(settings: Settings) -> Settings:
    return settings.with_(workers=4, reconcile_lookback_days=3, thumbnail_widths=(160,))


def test_cli_track_reconcile_and_summary(svc, settings, fake_ice, fake_oss):
    runner = Cli(cli_settings(settings))
    bad = runner.invoke("track", "ghost")
    assert bad.exit_code == 1 and "ICE does not know job 'ghost'" in bad.output
    assert runner.invoke("reconcile").output.startswith("no tracked jobs")
    keys = populate(fake_oss, fake_ice, 150)
    ok = runner.invoke("track", JOB)
    assert ok.exit_code == 0 and f"tracking {JOB}" in ok.output
    res = runner.invoke("reconcile")
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("files seen 150, new 150, already indexed 0, failed 0")
    assert snapshot_objects(svc) == Counter(keys)
    res = runner.invoke("reconcile", "--job", JOB, "--since", ms_to_iso(now_ms() - 3 * DAY_MS),
                               "--until", str(now_ms()))
    assert res.exit_code == 0 and "new 0, already indexed 150" in res.output
    assert runner.invoke("reconcile", "--job", "ghost").exit_code == 1
    assert runner.invoke("reconcile", "--since", "yesterday-ish").exit_code == 2
    assert runner.invoke("untrack", JOB).exit_code == 0


def test_untrack_sticks_until_track(client, svc, fake_ice, fake_oss):
    """An operator's untrack is not undone by the next verified callback; `track` undoes it."""
    key = put_snapshot(fake_oss, fake_ice, 1795867200000, make_frame(seed=3, width=320, height=180))
    track(svc, JOB)
    assert untrack(svc, JOB)
    assert client.post("/callbacks/live-snapshot", data=callback_body(key, 1795867200000)).status_code == 200
    drain(svc)
    assert Reconciler(svc).tracked_jobs() == []
    track(svc, JOB)
    assert Reconciler(svc).tracked_jobs() == [JOB]
