"""replay: failed (or rejected) events go back to pending with attempts reset and origin `replay`."""

from __future__ import annotations

from sqlalchemy import select

from receiver.db.models import Event
from receiver.ops.replay import replay, run_events
from receiver.services import Services
from receiver.sim.frames import make_frame
from receiver.worker.dispatch import drain
from tests.integration.test_reconcile import cli_settings
from tests.support.builders import BUCKET, Cli, callback_body, put_snapshot

T0 = 1796212805123


def events(svc: Services) -> list[Event]:
    with svc.sessions() as s:
        return list(s.execute(select(Event).order_by(Event.id)).scalars())


def failing(client, svc: Services, fake_ice, fake_oss, n: int = 2) -> list[str]:
    keys = []
    for i in range(n):
        key = put_snapshot(fake_oss, fake_ice, T0 + i, b"not a jpeg")
        assert client.post("/callbacks/live-snapshot", data=callback_body(key, T0 + i)).status_code == 200
        keys.append(key)
    drain(svc)
    assert [e.status for e in events(svc)] == ["failed"] * n
    return keys


def test_replay_requeues_failed_events_as_replay_and_keeps_key_strictness(client, svc, fake_ice, fake_oss):
    keys = failing(client, svc, fake_ice, fake_oss)
    assert replay(svc, job_id="other-job") == []
    ids = replay(svc)
    assert len(ids) == 2
    for ev in events(svc):
        assert (ev.status, ev.attempts, ev.origin, ev.key_from_ice) == ("pending", 0, "replay", False)
        assert ev.last_error and ev.last_error.startswith("replayed at ") and "was failed: NotAJpeg" in ev.last_error
    for key in keys:
        fake_oss.put(BUCKET, key, make_frame(seed=1, width=320, height=180))
    assert run_events(svc, ids) == ["done", "done"]
    assert all(ev.last_error is None and len(ev.snapshot_ids) == 1 for ev in events(svc))
    assert replay(svc) == []  # nothing failed any more


def test_cli_replay_with_process(client, svc, settings, fake_ice, fake_oss):
    failing(client, svc, fake_ice, fake_oss, n=1)
    runner = Cli(cli_settings(settings))
    res = runner.invoke("replay", "--status", "failed", "--job", "job-0001", "--process")
    assert res.exit_code == 0, res.output
    assert "re-queued 1 event(s)" in res.output and "processed: failed 1" in res.output
    [ev] = events(svc)
    assert ev.status == "failed" and ev.attempts == 1
    res = runner.invoke("replay", "--status", "rejected")
    assert res.exit_code == 0 and "re-queued 0 event(s)" in res.output
