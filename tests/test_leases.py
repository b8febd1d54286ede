"""receiver.leases and the maintenance loop: one reconciler and one pruner per deployment, with takeover."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import update

from receiver.leases import hold, release
from receiver.models import Lease, utcnow
from receiver.reconcile import Maintenance, start_reconciler
from receiver.tracking import track

from .conftest import JOB


def test_one_holder_at_a_time_and_takeover_after_expiry(svc):
    t0 = utcnow()
    assert hold(svc, "reconcile", "a", 60, now=t0)
    assert not hold(svc, "reconcile", "b", 60, now=t0 + dt.timedelta(seconds=1))
    assert hold(svc, "reconcile", "a", 60, now=t0 + dt.timedelta(seconds=50))  # renewed: until t0 + 110 s
    assert not hold(svc, "reconcile", "b", 60, now=t0 + dt.timedelta(seconds=100))
    assert hold(svc, "prune", "b", 60, now=t0)  # leases are independent by name
    assert hold(svc, "reconcile", "b", 60, now=t0 + dt.timedelta(seconds=111))  # a stopped renewing
    assert not hold(svc, "reconcile", "a", 60, now=t0 + dt.timedelta(seconds=112))


def test_maintenance_runs_in_one_process_and_moves_when_that_one_stops(svc, fake_ice):
    track(svc, JOB)
    svc.settings = svc.settings.with_(reconcile_seconds=60.0, retention_days=30.0)
    first, second = Maintenance(svc), Maintenance(svc)
    assert first.run_once() == ["reconcile", "prune"]
    listed = fake_ice.calls("ListLiveSnapshotFiles")
    assert listed > 0
    second._next_prune = 0  # due at once, as in a freshly started process
    assert second.run_once() == []  # another process holds both: no ICE calls, no prune
    assert fake_ice.calls("ListLiveSnapshotFiles") == listed
    assert first.run_once() == ["reconcile"]  # the holder renews (prune is hourly)
    # The first process is gone: once its leases lapse, the second takes both over.
    with svc.engine.begin() as conn:
        conn.execute(update(Lease).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    second._next_prune = 0
    assert second.run_once() == ["reconcile", "prune"]
    assert first.run_once() == []


def test_a_clean_stop_hands_over_at_once(svc, fake_ice):
    svc.settings = svc.settings.with_(reconcile_seconds=60.0)
    first, second = Maintenance(svc), Maintenance(svc)
    assert first.run_once() == ["reconcile"]
    assert second.run_once() == []
    first.stop()  # never started: only gives its leases up
    assert second.run_once() == ["reconcile"]
    release(svc, "nobody")  # releasing what one does not hold changes nothing
    assert first.run_once() == []


def test_closing_the_services_stops_the_loop_and_releases(svc, fake_ice):
    svc.settings = svc.settings.with_(reconcile_seconds=60.0)
    running = start_reconciler(svc)
    assert running is not None and svc.extras["maintenance"] is running
    deadline = time.monotonic() + 10
    while holder_of(svc, "reconcile") != running.holder:  # its first pass takes the lease
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert Maintenance(svc).run_once() == []
    svc.close()  # the loop stops and gives the lease up
    assert not running._thread.is_alive() and "maintenance" not in svc.extras
    with svc.sessions() as s:
        lease = s.get(Lease, "reconcile")
        assert lease is not None and lease.expires_at <= utcnow()


def holder_of(svc, name: str) -> str | None:  # type: ignore[no-untyped-def]
    with svc.sessions() as s:
        lease = s.get(Lease, name)
        return lease.holder if lease is not None else None
