"""receiver.leases and the maintenance loop: one reconciler and one pruner per deployment, with takeover."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from receiver.leases import hold
from receiver.models import Lease, utcnow
from receiver.reconcile import Maintenance
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
