"""RECEIVER_QUEUE=celery in-process: the task, the publisher against a real Redis, and the sweeper's rules.
The multi-process behaviour (workers, kills, Redis restarts) is in test_scale_e2e.py."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import update

from receiver.config import Settings
from receiver.db.models import Event, utcnow
from receiver.services import Services, services
from receiver.worker import celery as celery_worker
from receiver.worker.celery import (
    EVENTS_PER_MESSAGE,
    QUEUE,
    QUEUED_PER_STEP,
    SENT_AT,
    SINGLE_TASK_NAME,
    TASK_NAME,
    CeleryDispatcher,
    celery_init_app,
    events_per_message,
    make_celery,
    mark_taken,
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


def test_task_takes_event_ids_and_runs_process_event_in_the_app_context(celery_app, fake_ice, fake_oss, frame):
    svc = services(celery_app)
    eid = post(celery_app, callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0))
    other = post(celery_app, callback_body(put_snapshot(fake_oss, fake_ice, T0 + 5000, frame), T0 + 5000))
    celery = celery_init_app(celery_app)
    task = celery.tasks[TASK_NAME]
    assert task.acks_late and task.reject_on_worker_lost
    # eager: the FlaskTask base entered the app context; an id with no row is skipped and the rest still runs
    assert task.apply(args=[[eid, 10**9, other]]).get() == ["done", "skipped", "done"]
    assert status(svc, eid).status == status(svc, other).status == "done"
    assert task.apply(args=[[eid]]).get() == ["skipped"]  # a second delivery is harmless
    # Messages of the one-event task, from a web process of an older release, are still consumed.
    single = celery.tasks[SINGLE_TASK_NAME]
    assert single.acks_late and single.reject_on_worker_lost
    assert single.apply(args=[other]).get() == "skipped"
    # A message this service's publisher never writes does nothing, and says so in the log (then is acked).
    assert task.apply(args=[["1"]]).get() == [] and task.apply(args=[7]).get() == []
    assert task.apply(args=[[True]]).get() == [] and single.apply(args=["7"]).get() == "error"


def test_events_share_a_message_only_once_the_queue_backs_up():
    assert [events_per_message(q) for q in (0, 1, 7, 8, 11, 12, 31, 32, 10**6)] == [1, 1, 1, 2, 2, 3, 7, 8, 8]
    assert events_per_message(QUEUED_PER_STEP * EVENTS_PER_MESSAGE) == EVENTS_PER_MESSAGE


def test_publisher_packs_events_by_the_queue_length_it_finds(celery_app, redis_server, monkeypatch):  # noqa: F811
    # Readings stay fresh for the whole test, however slow the machine; staleness is set by hand below.
    monkeypatch.setattr(celery_worker, "QUEUE_READING_SECONDS", 600.0)
    r = redis.Redis.from_url(redis_server.url)
    r.delete(QUEUE)
    svc = services(celery_app)
    dispatcher = svc.dispatcher
    assert isinstance(dispatcher, CeleryDispatcher)

    def publish(ids: list[int]) -> None:
        before = dispatcher.published
        dispatcher.submit(ids)
        deadline = time.monotonic() + 10
        while dispatcher.published < before + len(ids):
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def queued_args() -> list[list[int]]:  # oldest first; the stand-ins for other messages left out
        messages = [json.loads(m) for m in reversed(r.lrange(QUEUE, 0, -1)) if m != b"{}"]
        return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]

    publish([1, 2, 3])  # the workers keep up (an empty queue): one event per message
    assert queued_args() == [[1], [2], [3]]
    r.lpush(QUEUE, *[b"{}"] * 21)  # a backlog: 25 messages waiting after the next push
    publish([4])
    publish(list(range(5, 20)))
    # 25 waiting after [4] was pushed: 6 events a message
    assert queued_args() == [[1], [2], [3], [4], [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16], [17, 18, 19]]
    r.delete(QUEUE)
    publish([20, 21])  # still packed by the last push's 28 waiting; this push finds 1
    publish([22])  # so one event per message again
    assert queued_args() == [[20, 21], [22]]
    r.lpush(QUEUE, *[b"{}"] * 30)
    publish([23])  # 33 waiting: packing by 8 from now on, for as long as that reading is fresh
    dispatcher._queued_at -= celery_worker.QUEUE_READING_SECONDS  # a process idle since then: the reading is stale
    publish([24, 25])
    assert queued_args()[-2:] == [[24], [25]]
    r.delete(QUEUE)
    r.close()


def test_a_stop_during_the_wait_for_a_fuller_message_publishes_what_waits(celery_app, redis_server):  # noqa: F811
    r = redis.Redis.from_url(redis_server.url)
    r.delete(QUEUE)
    r.lpush(QUEUE, *[b"{}"] * 100)
    dispatcher = services(celery_app).dispatcher
    assert isinstance(dispatcher, CeleryDispatcher)
    dispatcher.submit([1])
    deadline = time.monotonic() + 10
    while dispatcher.published < 1:  # the push that reads the backlog
        assert time.monotonic() < deadline
        time.sleep(0.01)
    dispatcher.submit([2, 3])  # 8 a message now: the publisher waits for 6 more
    dispatcher.stop()  # the stop is queued behind them: it ends the wait, and what waits is sent
    assert dispatcher.published == 3
    last = json.loads(r.lindex(QUEUE, 0))
    assert json.loads(base64.b64decode(last["body"]))[0] == [[2, 3]]
    r.delete(QUEUE)
    r.close()


def test_send_task_fallback_and_retries_send_lists_of_ids(celery_app, redis_server, fake_ice, fake_oss,  # noqa: F811
                                                          frame):
    """The other two ways a message is sent: send_task (brokers the direct publisher cannot use) and a retry's
    countdown message. Both carry a list, or process_events would refuse them (and the sweeper re-send the
    same thing forever)."""
    r = redis.Redis.from_url(redis_server.url)
    r.delete(QUEUE)
    svc = services(celery_app)
    dispatcher = svc.dispatcher
    assert isinstance(dispatcher, CeleryDispatcher)
    dispatcher._fast_unusable = True  # as for a URL redis-py cannot open
    eid = post(celery_app, callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0))
    deadline = time.monotonic() + 10
    while r.llen(QUEUE) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    [raw] = r.lrange(QUEUE, 0, -1)
    assert json.loads(base64.b64decode(json.loads(raw)["body"]))[0] == [[eid]]
    r.delete(QUEUE)
    fake_oss.fail_next("GET", 1, status=503, code="ServiceUnavailable")  # a transient failure: retried later
    task = celery_init_app(celery_app).tasks[TASK_NAME]
    assert task.apply(args=[[eid]]).get() == ["pending"]
    [raw] = r.lrange(QUEUE, 0, -1)
    retry = json.loads(raw)
    assert json.loads(base64.b64decode(retry["body"]))[0] == [[eid]] and retry["headers"]["eta"] is not None
    # Its send time too: without it, a retry message oldest in the queue read as "sent now", and the sweeper
    # re-sent the whole overdue backlog behind it.
    assert abs(retry["headers"][SENT_AT] - time.time()) < 10
    r.delete(QUEUE)
    r.close()


def test_the_sweeper_reads_the_queue_of_a_broker_url_in_kombus_spelling(svc: Services, redis_server: RedisServer,  # noqa: F811
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """`rediss://…?ssl_cert_reqs=CERT_REQUIRED` is how Celery's documentation spells it; redis-py wants
    `required`. The publisher translated it and the sweeper did not, so its look at the queue failed (at debug
    level) on every sweep, and every sweep re-sent the overdue backlog. (No TLS Redis here: the URL redis-py
    is given is what is checked, then the queue is read through the test server.)"""
    r = redis.Redis.from_url(redis_server.url)
    r.delete(QUEUE)
    r.lpush(QUEUE, json.dumps({"headers": {SENT_AT: 1234.5}, "body": ""}))
    opened: list[str] = []
    real_from_url = redis.Redis.from_url

    def from_url(url: str, **kw: Any) -> Any:
        opened.append(url)
        return real_from_url(redis_server.url, **kw)

    monkeypatch.setattr(redis.Redis, "from_url", from_url)
    dispatcher = CeleryDispatcher(svc)
    svc.settings = svc.settings.with_(broker_url="rediss://broker.internal:6380/0?ssl_cert_reqs=CERT_REQUIRED")
    assert dispatcher._queued_since() == 1234.5
    assert opened == ["rediss://broker.internal:6380/0?ssl_cert_reqs=required"]
    monkeypatch.setattr(redis.Redis, "from_url", real_from_url)
    # A queue it cannot read is said once, as a warning, then quietly until it can read it again.
    svc.settings = svc.settings.with_(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    dispatcher._redis = None
    with caplog.at_level("DEBUG", logger="receiver.worker.celery"):
        assert dispatcher._queued_since() is None and dispatcher._queued_since() is None
    said = [rec.levelname for rec in caplog.records if "could not look at the broker's queue" in rec.message]
    assert said == ["WARNING", "DEBUG"]
    r.delete(QUEUE)
    r.close()


def test_events_of_a_taken_message_count_as_just_dispatched(svc: Services):
    """A worker that takes a message of several events claims them one at a time; meanwhile the sweeper must not
    take the later ones, due since long ago (a backlog), for lost. Retries scheduled later and claimed events are
    left alone."""
    now = utcnow()
    ids = []
    with svc.sessions.begin() as s:
        for i, (st, next_at) in enumerate([("pending", now - dt.timedelta(seconds=600)),
                                           ("pending", now - dt.timedelta(seconds=600)),
                                           ("pending", now + dt.timedelta(seconds=30)),
                                           ("processing", now - dt.timedelta(seconds=600))]):
            ev = Event(job_id="job-0001", identity=f"t{i}", origin="callback", status=st, attempts=0,
                       raw_body="{}", received_at=now, updated_at=now, next_attempt_at=next_at,
                       lease_until=now - dt.timedelta(seconds=1) if st == "processing" else None)
            s.add(ev)
            s.flush()
            ids.append(ev.id)
    waiting, other, later, claimed = ids
    mark_taken(svc, [waiting, later, claimed])
    assert redispatch_due(svc, grace=60) == [other, claimed]  # claimed: its lease ran out, its worker died
    assert status(svc, later).next_attempt_at > utcnow()  # its retry time kept
    assert status(svc, later).lease_until is None
    # The worker that took them dies before it gets to `waiting`: its message stays unacknowledged (solo and
    # threads pools), so only the taken event's lease brings it back, one lease later rather than one
    # RECEIVER_REDISPATCH_SECONDS later (the grace, 60 s here, is far from over).
    taken = status(svc, waiting)
    assert taken.status == "pending" and taken.lease_until is not None
    assert abs((taken.lease_until - taken.next_attempt_at).total_seconds() - svc.settings.lease_seconds) < 1
    with svc.sessions.begin() as s:  # a lease later
        s.execute(update(Event).where(Event.id == waiting).values(lease_until=utcnow() - dt.timedelta(seconds=1)))
    assert redispatch_due(svc, grace=60) == [waiting]
    assert status(svc, waiting).lease_until is None  # re-sent: an ordinary pending event again


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
    assert (args, kwargs) == ([[eid]], {})
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
        app.send_task(TASK_NAME, args=[[41]], producer=producer, headers={SENT_AT: 1.5})
    publisher = RedisTaskPublisher(redis_server.url, TASK_NAME, QUEUE)
    assert publisher.publish([[42], [43, 44]], {SENT_AT: 2.5}) == 3  # the queue's length after the push
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
    assert json.loads(base64.b64decode(ours["body"])) == [[[42]], {}, json.loads(base64.b64decode(theirs["body"]))[2]]
    assert ours["headers"]["argsrepr"] == "[[42]]" and ours["headers"][SENT_AT] == 2.5
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]
    assert ours["properties"]["delivery_tag"] != ours_next["properties"]["delivery_tag"]
    assert json.loads(base64.b64decode(ours_next["body"]))[0] == [[43, 44]]  # consumed in the order given

