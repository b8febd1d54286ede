"""receiver.ops.leases and the maintenance loop: one reconciler and one pruner per deployment, with takeover."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import update

from receiver.db.models import Lease, utcnow
from receiver.ops.leases import hold, release
from receiver.ops.maintenance import Maintenance, start_maintenance
from receiver.ops.tracking import track
from tests.support.builders import JOB


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
    svc.settings = svc.settings.with_(message_retention_days=0.0, reconcile_seconds=60.0, retention_days=30.0)
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
    svc.settings = svc.settings.with_(message_retention_days=0.0, reconcile_seconds=60.0)
    first, second = Maintenance(svc), Maintenance(svc)
    assert first.run_once() == ["reconcile"]
    assert second.run_once() == []
    first.stop()  # never started: only gives its leases up
    assert second.run_once() == ["reconcile"]
    release(svc, "nobody")  # releasing what one does not hold changes nothing
    assert first.run_once() == []


def test_closing_the_services_stops_the_loop_and_releases(svc, fake_ice):
    svc.settings = svc.settings.with_(message_retention_days=0.0, reconcile_seconds=60.0)
    running = start_maintenance(svc)
    assert running is not None and svc.maintenance is running
    deadline = time.monotonic() + 10
    while holder_of(svc, "reconcile") != running.holder:  # its first pass takes the lease
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert Maintenance(svc).run_once() == []
    svc.close()  # the loop stops and gives the lease up
    assert not running._thread.is_alive() and svc.maintenance is None
    assert holder_of(svc, "reconcile") is None  # released: the next process to ask takes it


def holder_of(svc, name: str) -> str | None:  # type: ignore[no-untyped-def]
    with svc.sessions() as s:
        lease = s.get(Lease, name)
        return lease.holder if lease is not None else None


def test_a_pass_renews_its_lease_per_job_and_ends_when_it_is_lost(svc, fake_ice, monkeypatch):
    from receiver.ops.reconcile import Reconciler

    fake_ice.add_job("job-0002")
    track(svc, JOB)
    track(svc, "job-0002")
    svc.settings = svc.settings.with_(message_retention_days=0.0, reconcile_seconds=60.0)
    done: list[str] = []
    real = Reconciler.reconcile_job

    def reconcile_then_lose_the_lease(self, job_id, *args, **kwargs):  # type: ignore[no-untyped-def]
        done.append(job_id)
        with svc.engine.begin() as conn:  # another process took the lease meanwhile (this one's lapsed)
            conn.execute(update(Lease).values(holder="other", expires_at=utcnow() + dt.timedelta(hours=1)))
        return real(self, job_id, *args, **kwargs)

    monkeypatch.setattr(Reconciler, "reconcile_job", reconcile_then_lose_the_lease)
    assert Maintenance(svc).run_once() == ["reconcile"]
    assert len(done) == 1  # the second job was left to the new holder


def test_a_stopping_loop_takes_no_lease(svc):
    svc.settings = svc.settings.with_(message_retention_days=0.0, reconcile_seconds=60.0, retention_days=30.0)
    m = Maintenance(svc)
    m._stop.set()
    assert m.run_once() == [] and holder_of(svc, "reconcile") is None and holder_of(svc, "prune") is None
