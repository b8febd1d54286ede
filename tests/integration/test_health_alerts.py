"""Health alerts (ops/health_alerts.py) on a clock the test drives: a silent stream is announced once per
confirmed status, its recovery once, and keyframe jitter never."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import pytest
from sqlalchemy import select

from receiver.db.models import HealthState, Message
from receiver.ops import tracking
from receiver.ops.health_alerts import HealthAlerts
from receiver.services import Services
from receiver.sim.frames import make_frame
from receiver.timeutil import now_ms
from receiver.worker.dispatch import drain
from tests.support.builders import JOB, callback_body, put_snapshot

INTERVAL = 5000  # the fake ICE job's TimeInterval


def ingest(client: Any, svc: Services, fake_oss: Any, fake_ice: Any, ms: int) -> None:
    key = put_snapshot(fake_oss, fake_ice, ms, make_frame(ms // 1000 % 997, width=160, height=90))
    assert client.post("/callbacks/live-snapshot", data=callback_body(key, ms)).status_code == 200
    drain(svc)


def health_messages(svc: Services) -> list[dict[str, Any]]:
    with svc.sessions() as s:
        rows = s.execute(select(Message).where(Message.type == "stream.health_changed").order_by(Message.id))
        return [json.loads(m.body)["data"] for m in rows.scalars()]


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


@pytest.fixture
def base() -> int:
    # Virtual time runs in the past hour (the loop watches jobs that reported in the last 24 h).
    return (now_ms() - 3600_000) // 1000 * 1000


def test_a_silent_stream_is_announced_once_and_its_recovery_once(client, svc, fake_oss, fake_ice, base):
    alerts = HealthAlerts(svc)
    for k in range(12):
        ingest(client, svc, fake_oss, fake_ice, base + k * INTERVAL)
        assert alerts.run_once(at(base + k * INTERVAL + 1000)) == []
    assert alerts.run_once(at(base + 11 * INTERVAL + 1500)) == []  # not due again: evaluated once per interval
    assert health_messages(svc) == []  # the first evaluation recorded "ok" without announcing it
    with svc.sessions() as s:
        assert s.get(HealthState, JOB).status == "ok"

    # Silence: within CONFIRM (2) + 2 intervals, exactly one message.
    silent_evals = [base + (12 + j) * INTERVAL + 1000 for j in range(4)]
    for t in silent_evals:
        alerts.run_once(at(t))
    [gap] = health_messages(svc)
    assert (gap["job_id"], gap["account"], gap["previous"], gap["status"]) == (JOB, "default", "ok", "gap")
    assert gap["since"] == at(silent_evals[1]).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert set(gap["health"]) == {"job_id", "since", "until", "interval_seconds", "expected", "seen", "status",
                                  "gaps", "frozen", "black"}
    assert gap["health"]["job_id"] == JOB and gap["health"]["status"] == "gap"
    # Still silent: the stream is now stale (confirmed the same way), announced once more.
    for j in range(4, 8):
        alerts.run_once(at(base + (12 + j) * INTERVAL + 1000))
    assert [m["status"] for m in health_messages(svc)] == ["gap", "stale"]

    # It resumes: back to ok, announced once (through "gap" while the ended gap is recent, as the API says).
    start = base + 20 * INTERVAL
    for k in range(12):
        ingest(client, svc, fake_oss, fake_ice, start + k * INTERVAL)
        alerts.run_once(at(start + k * INTERVAL + 1000))
    statuses = [(m["previous"], m["status"]) for m in health_messages(svc)]
    assert statuses[:2] == [("ok", "gap"), ("gap", "stale")]
    assert statuses[-1] == (statuses[-1][0], "ok") and [s for _, s in statuses].count("ok") == 1
    with svc.sessions() as s:
        state = s.get(HealthState, JOB)
        assert (state.status, state.candidate, state.streak) == ("ok", None, 0)
    # Evaluating on, nothing new: the stream is steady.
    for k in range(12, 16):
        ingest(client, svc, fake_oss, fake_ice, start + k * INTERVAL)
        alerts.run_once(at(start + k * INTERVAL + 1000))
    assert len(health_messages(svc)) == len(statuses)


def test_jitter_of_a_second_on_a_five_second_interval_announces_nothing(client, svc, fake_oss, fake_ice, base):
    rnd = random.Random(16)
    alerts = HealthAlerts(svc)
    frames = [base + k * INTERVAL + rnd.randint(-1000, 1000) for k in range(30)]
    evaluations = [base + k * INTERVAL + 2500 + rnd.randint(-400, 400) for k in range(30)]
    evaluated = 0
    for k in range(30):
        ingest(client, svc, fake_oss, fake_ice, frames[k])
        alerts.run_once(at(evaluations[k]))
        with svc.sessions() as s:
            evaluated += s.get(HealthState, JOB) is not None
    assert evaluated == 30
    assert health_messages(svc) == []
    with svc.sessions() as s:
        assert s.get(HealthState, JOB).status == "ok"


def test_only_jobs_that_reported_within_a_day_or_are_tracked_are_evaluated(client, svc, fake_oss, fake_ice):
    ingest(client, svc, fake_oss, fake_ice, now_ms() - 25 * 3600_000)
    tracking.untrack(svc, JOB)
    alerts = HealthAlerts(svc)
    alerts.run_once()
    with svc.sessions() as s:
        assert s.get(HealthState, JOB) is None
    tracking.track(svc, JOB)
    alerts.run_once()
    with svc.sessions() as s:
        assert s.get(HealthState, JOB).status == "stale"


def test_one_process_evaluates_while_another_holds_the_lease(client, svc, fake_oss, fake_ice, base):
    ingest(client, svc, fake_oss, fake_ice, now_ms() - 1000)
    first, second = HealthAlerts(svc), HealthAlerts(svc)
    first.run_once()
    with svc.sessions() as s:
        assert s.get(HealthState, JOB) is not None
    assert second.run_once(at(now_ms() + 60_000)) == [] and second._evaluated == {}
