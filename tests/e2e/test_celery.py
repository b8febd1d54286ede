"""RECEIVER_QUEUE=celery in-process: the task, the publisher against a real Redis, and the sweeper's rules.
The multi-process behaviour (workers, kills, Redis restarts) is in test_scale_e2e.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time

import pytest
import redis
from flask import Flask
from sqlalchemy import update

from receiver.config import Settings
from receiver.db.models import Event, utcnow
from receiver.services import Services, services
from receiver.worker.celery import (
    QUEUE,
    SENT_AT,
    TASK_NAME,
    CeleryDispatcher,
    celery_init_app,
    make_celery,
    oldest_queued_sent_at,
    redispatch_due,
)
from receiver.worker.celery_messages import RedisTaskPublisher
from tests.support.builders import build_app, callback_body, put_snapshot
from tests.support.pg_redis import RedisServer, free_port, redis_server  # noqa: F401

T0 = 1796212805123


def post(app: Flask, body: bytes) -> int:
    resp = app.test_client().post("/callbacks/live-snapshot", data=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return int(resp.get_json()["events"][0])


def status(svc: Services, eid: int) -> Event:
    with svc.sessions() as s:
        ev = s.get(Event, eid)
        assert ev is not None
        return ev


@pytest.fixture
def celery_app(settings: Settings, redis_server: RedisServer):  # type: ignore[no-untyped-def]  # noqa: F811
    app = build_app(settings.with_(queue="celery", broker_url=redis_server.url))
    yield app
    services(app).close()
    if "celery" in app.extensions:
        app.extensions["celery"].close()


def test_task_takes_the_event_id_and_runs_process_event_in_the_app_context(celery_app, fake_ice, fake_oss, frame):
    svc = services(celery_app)
    eid = post(celery_app, callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0))
    celery = celery_init_app(celery_app)
    task = celery.tasks[TASK_NAME]
    assert task.acks_late and task.reject_on_worker_lost
    assert task.apply(args=[eid]).get() == "done"  # eager: the FlaskTask base entered the app context
    assert status(svc, eid).status == "done"
    assert task.apply(args=[eid]).get() == "skipped"  # a second delivery is harmless


def test_web_publishes_only_the_event_id_to_redis(celery_app, redis_server, fake_ice, fake_oss):  # noqa: F811
    r = redis.Redis.from_url(redis_server.url)
    r.delete(QUEUE)
    svc = services(celery_app)
    assert isinstance(svc.dispatcher, CeleryDispatcher)
    eid = post(celery_app, callback_body("snapshot/job-0001/1.jpg", T0))
    deadline = time.monotonic() + 10
    while r.llen(QUEUE) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    [raw] = r.lrange(QUEUE, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == TASK_NAME
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([eid], {})
    # The send time travels in a header: the sweeper reads the oldest one still queued.
    assert abs(message["headers"][SENT_AT] - time.time()) < 10
    assert oldest_queued_sent_at(r) == message["headers"][SENT_AT]
    assert status(svc, eid).status == "pending"  # the web process only records and dispatches
    r.close()


def test_callbacks_are_accepted_while_the_broker_is_down(settings):
    app = build_app(settings.with_(queue="celery", broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    svc = services(app)
    try:
        started = time.monotonic()
        ids = [post(app, callback_body(f"snapshot/job-0001/{i}.jpg", T0 + i)) for i in range(3)]
        assert time.monotonic() - started < 3  # ICE's deadline; publishing is off the request thread
        svc.dispatcher.stop()  # flushes the publisher: its failure is logged, nothing raised
        assert {status(svc, i).status for i in ids} == {"pending"}
        assert redispatch_due(svc, grace=0) == sorted(ids)  # the sweeper will send them once Redis is back
    finally:
        svc.close()


def test_sweeper_rules(svc: Services):
    app_ids = []
    with svc.sessions.begin() as s:
        now = utcnow()
        for i, (st, next_at, lease) in enumerate([
            ("pending", now, None),  # just recorded: its message is on the way
            ("pending", now - dt.timedelta(seconds=600), None),  # overdue: message lost
            ("processing", now - dt.timedelta(seconds=600), now - dt.timedelta(seconds=1)),  # worker died
            ("processing", now - dt.timedelta(seconds=600), now + dt.timedelta(seconds=60)),  # running
            ("done", now - dt.timedelta(seconds=600), None),
        ]):
            ev = Event(job_id="job-0001", identity=f"id{i}", origin="callback", status=st, attempts=1,
                       raw_body="{}", received_at=now, updated_at=now, next_attempt_at=next_at, lease_until=lease)
            s.add(ev)
            s.flush()
            app_ids.append(ev.id)
    fresh, lost, dead, running, done = app_ids
    assert redispatch_due(svc, grace=60) == [lost, dead]
    assert status(svc, dead).status == "pending" and status(svc, dead).lease_until is None
    assert redispatch_due(svc, grace=60) == []  # marked as just dispatched: not re-sent every sweep
    with svc.sessions.begin() as s:
        s.execute(update(Event).where(Event.id == running).values(lease_until=utcnow() - dt.timedelta(seconds=1)))
    assert redispatch_due(svc, grace=60) == [running]
    assert {status(svc, i).status for i in (fresh, done)} == {"pending", "done"}


def test_sweeper_leaves_a_backlog_alone(svc: Services, redis_server: RedisServer):  # noqa: F811
    """Events due after the oldest message still queued are waiting behind it, not lost: not re-sent (one
    slow worker with a long queue was sent every overdue event again on every sweep)."""
    r = redis.Redis.from_url(redis_server.url)
    r.delete(QUEUE)
    assert oldest_queued_sent_at(r) is None  # an empty queue: the grace alone decides
    now = utcnow()
    ids = []
    with svc.sessions.begin() as s:
        for i, age in enumerate([900, 600, 300]):
            ev = Event(job_id="job-0001", identity=f"b{i}", origin="callback", status="pending", attempts=0,
                       raw_body="{}", received_at=now, updated_at=now,
                       next_attempt_at=now - dt.timedelta(seconds=age))
            s.add(ev)
            s.flush()
            ids.append(ev.id)
    old, middle, recent = ids
    # The oldest queued message was sent 700 s ago: `middle` and `recent` (due since) may be behind it.
    r.lpush(QUEUE, json.dumps({"headers": {SENT_AT: time.time() - 700}, "body": ""}))
    queued_since = oldest_queued_sent_at(r)
    assert redispatch_due(svc, grace=60, queued_since=queued_since) == [old]
    # Once the queue has drained past them, they are overdue like any lost message.
    r.delete(QUEUE)
    assert redispatch_due(svc, grace=60, queued_since=oldest_queued_sent_at(r)) == [middle, recent]
    # A message without the header (an older release's) counts as sent now: the grace alone decides, as before.
    r.lpush(QUEUE, json.dumps({"headers": {}, "body": ""}))
    with svc.sessions.begin() as s:
        s.execute(update(Event).where(Event.id.in_(ids)).values(next_attempt_at=now - dt.timedelta(seconds=600)))
    assert redispatch_due(svc, grace=60, queued_since=oldest_queued_sent_at(r)) == ids
    r.delete(QUEUE)
    r.close()


def test_fast_messages_are_send_task_messages_key_by_key(settings, redis_server):  # noqa: F811
    """The publisher writes Celery protocol 2 messages itself (worker/celery_messages.py): the same keys and
    values as Celery's own send_task through kombu, except the per-message ids and the sender's names. A
    Celery or kombu upgrade that changes the format fails here rather than in the queue."""
    r = redis.Redis.from_url(redis_server.url)
    r.delete(QUEUE)
    app = make_celery(settings.with_(queue="celery", broker_url=redis_server.url))
    with app.producer_or_acquire() as producer:
        app.send_task(TASK_NAME, args=[41], producer=producer, headers={SENT_AT: 1.5})
    publisher = RedisTaskPublisher(redis_server.url, TASK_NAME, QUEUE)
    publisher.publish([42, 43], {SENT_AT: 2.5})
    publisher.close()
    theirs, ours, ours_next = (json.loads(m) for m in reversed(r.lrange(QUEUE, 0, -1)))  # oldest first
    r.close()
    app.close()
    per_message = {"id", "root_id", "correlation_id", "delivery_tag", "origin", "reply_to"}

    def flat(d: dict, prefix: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
        return out

    a, b = flat(theirs), flat(ours)
    assert a.keys() == b.keys()
    differing = {k for k in a if a[k] != b[k] and k.rsplit(".", 1)[-1] not in per_message}
    assert differing == {"body", "headers.argsrepr", f"headers.{SENT_AT}"}  # the argument and the send time
    assert json.loads(base64.b64decode(ours["body"])) == [[42], {}, json.loads(base64.b64decode(theirs["body"]))[2]]
    assert ours["headers"]["argsrepr"] == "[42]" and ours["headers"][SENT_AT] == 2.5
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    assert ours["properties"]["delivery_tag"] != ours_next["properties"]["delivery_tag"]
    assert json.loads(base64.b64decode(ours_next["body"]))[0] == [43]  # consumed in the order given

