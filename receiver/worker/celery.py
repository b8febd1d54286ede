"""Celery on Redis (RECEIVER_QUEUE=celery), in the pattern of Flask's own Celery example.

Every task runs inside the Flask app context and calls the same process_event as the thread pool. The task
takes only event ids: the inbox row is the message, the broker only says "look at rows N, M now". Late acks
plus reject-on-worker-lost give a killed worker's message back to the broker; the claim/lease in
process_event makes any second delivery a no-op, and the sweeper (CeleryDispatcher, below) re-dispatches
whatever the broker lost. Nothing here connects at import time: apps are built by the functions below.

A message carries one event while the workers keep up, and several once the broker's queue backs up
(events_per_message): a worker's fixed cost per message is then shared when the workers are the bottleneck.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from flask import Flask
from sqlalchemy import bindparam, select, update

from receiver.config import Settings
from receiver.db.engine import single_statement
from receiver.db.models import Event, EventStatus, utcnow
from receiver.db.queries import due_events
from receiver.services import Services, current_services, services
from receiver.worker import celery_messages
from receiver.worker.deliveries import start_deliveries
from receiver.worker.dispatch import SWEEP_BATCH
from receiver.worker.pipeline import CLOCK_TOLERANCE, process_event

log = logging.getLogger(__name__)

TASK_NAME = "receiver.process_events"  # argument: a list of event ids, processed in order
# argument: one event id. What releases before process_events sent; still consumed, so a rolling upgrade
# loses no message (an older worker discards the new task's messages as unknown; the sweeper re-sends them).
SINGLE_TASK_NAME = "receiver.process_event"
QUEUE = "receiver"
EVENTS_PER_MESSAGE = 8
# One more event per message for every this many messages found waiting in the queue after a push.
QUEUED_PER_STEP = 4
# How long the publisher may wait to fill a message once events share them (never while the queue is short).
PACK_WAIT_SECONDS = 0.05
# How long the queue's length read from the last push is taken as the backlog.
QUEUE_READING_SECONDS = 1.0


def events_per_message(queued: int) -> int:
    """How many event ids share a message, given how many messages waited in the broker after the last push.

    A worker pays ~1 ms of CPU per message whatever it carries (kombu's BRPOP and unacked bookkeeping, the task
    trace, the app context: bench/messages.py), a fifteenth of an event's cost. While the queue is short the
    workers keep up: one event per message, so each free pool slot takes one and no event waits behind
    another. Once it backs up, the workers are the bottleneck and an event's wait is the queue's anyway:
    events share messages, up to EVENTS_PER_MESSAGE, and the backlog drains faster.
    """
    return max(1, min(EVENTS_PER_MESSAGE, queued // QUEUED_PER_STEP))


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message reserved per pool slot: a long backlog stays in Redis, not in a worker that may die.
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "broker_connection_retry_on_startup": True,
        # Publishing happens off the request thread, but a dead broker should still fail fast: the sweeper
        # re-dispatches anything whose message never made it.
        "broker_connection_timeout": 2.0,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                      "interval_max": 0.5},
        # Redis redelivers an unacked message after this; the sweeper usually gets there first (lease).
        "broker_transport_options": {"visibility_timeout": 3600},
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings) -> Celery:
    """A client-only app for publishing (the web process): send_task by name needs no task code."""
    app = Celery("receiver", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def celery_init_app(app: Flask) -> Celery:
    """Flask's pattern: a Task base class that enters the app context, and the app kept in extensions."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    settings: Settings = services(app).settings
    celery = Celery(app.name, task_cls=FlaskTask)
    celery.conf.update(celery_config(settings))
    celery.set_default()
    for name, run in ((TASK_NAME, process_events_task), (SINGLE_TASK_NAME, process_event_task)):
        celery.task(name=name, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run)
    app.extensions["celery"] = celery
    return celery


def process_events_task(task: Task, event_ids: list[int]) -> list[str]:
    """Each event in turn, claimed just before it runs (so the others hold no lease while they wait)."""
    if not isinstance(event_ids, list) or not all(type(i) is int for i in event_ids):
        # Not from this service's publisher: nothing to do (logged; acked like any finished task).
        log.error("%s: expected a list of event ids, got %r", TASK_NAME, event_ids)
        return []
    svc = current_services()
    if len(event_ids) > 1:
        try:
            mark_taken(svc, event_ids[1:])
        except Exception:
            log.warning("could not mark %d event(s) as taken; the sweeper may re-send them", len(event_ids) - 1)
    statuses: list[str] = []
    for event_id in event_ids:
        try:
            outcome = process_event(svc, event_id)
        except Exception:
            # The database itself failed (process_event records every other failure). The event stays pending
            # or claimed in the inbox and the sweeper re-sends it; the rest of the message still runs.
            log.exception("event %s: could not be processed; the sweeper will re-send it", event_id)
            statuses.append("error")
            continue
        if outcome.retry_in is not None:
            # A countdown message is the fast path for the retry; if it is lost, the sweeper finds the row.
            try:
                # With its send time, as every message carries: the sweeper reads it from the oldest queued one.
                task.app.send_task(TASK_NAME, args=[[event_id]], countdown=outcome.retry_in,
                                   headers={SENT_AT: time.time()})
            except Exception:
                log.warning("event %s: could not schedule the retry; the sweeper will", event_id)
        statuses.append(outcome.status)
    return statuses


def process_event_task(task: Task, event_id: int) -> str:
    if type(event_id) is not int:
        log.error("%s: expected an event id, got %r", SINGLE_TASK_NAME, event_id)
        return "error"
    return process_events_task(task, [event_id])[0]


def run_worker(app: Flask, pool: str, concurrency: int, loglevel: str = "INFO") -> None:
    """`receiver worker` with RECEIVER_QUEUE=celery: a Celery worker plus the inbox sweeper thread."""
    svc = services(app)
    dispatcher = svc.dispatcher
    assert isinstance(dispatcher, CeleryDispatcher)
    celery = celery_init_app(app)

    def after_fork(**_: Any) -> None:
        # Pool children must not share the parent's database sockets (SQLAlchemy's documented recipe).
        svc.engine.dispose(close=False)

    def ready(**_: Any) -> None:
        # Started once the pool has forked, so the children never inherit these threads.
        dispatcher.start_sweeper()
        # Webhooks go out from this process's own bounded threads, never a pool slot: a slow subscriber
        # (10 s an attempt) must not hold up events (worker/deliveries.py).
        start_deliveries(svc)

    def shutdown(**_: Any) -> None:
        dispatcher.stop()

    worker_process_init.connect(after_fork, weak=False)
    worker_ready.connect(ready, weak=False)
    worker_shutdown.connect(shutdown, weak=False)
    argv = [
        "worker", f"--pool={pool}", f"--concurrency={max(1, concurrency)}", f"--loglevel={loglevel}",
        "-Q", QUEUE, f"--hostname=receiver-{os.getpid()}@{socket.gethostname()}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    try:
        celery.worker_main(argv)
    finally:
        svc.close()


PUBLISH_BATCH = 1000  # messages per LPUSH when the publisher drains a burst
SENT_AT = "receiver_sent_at"  # message header: when the publisher sent it (epoch seconds)


def oldest_queued_sent_at(client: Any) -> float | None:
    """When the oldest message still waiting in the broker's queue was sent; None if the queue is empty.

    kombu's Redis transport LPUSHes messages and workers BRPOP them, so the list is FIFO and its last element
    is the oldest. Every message sent before that one has left the queue (taken by a worker); messages sent
    after it may still be waiting behind it. A message without the header (sent by an older release) counts
    as sent now, which leaves the grace alone to decide, as before.
    """
    raw = client.lindex(QUEUE, -1)
    if raw is None:
        return None
    try:
        return float(json.loads(raw)["headers"][SENT_AT])
    except (ValueError, KeyError, TypeError):
        return time.time()


@functools.cache
def _taken_statement() -> Any:
    return (
        update(Event)
        .where(Event.id.in_(bindparam("event_ids", expanding=True)), Event.status == EventStatus.PENDING,
               Event.next_attempt_at <= bindparam("now"))
        .values(next_attempt_at=bindparam("now"), lease_until=bindparam("lease"))
    )


def mark_taken(svc: Services, event_ids: list[int]) -> None:
    """The events of a message a worker has just taken count as just dispatched (next_attempt_at = now), and
    carry a lease while they wait in that worker (they stay pending: nothing is claimed yet).

    They wait for their turn in that worker, not in the broker, so the sweeper must not take them for lost. Due
    for long (a backlog), with the queue drained behind their message, they would otherwise look overdue until
    each one's claim. But if that worker dies, its message stays unacknowledged (the solo and threads pools)
    and nothing would send them again before RECEIVER_REDISPATCH_SECONDS: the lease makes them due once it
    runs out (queries.due_events), as a dead worker's claimed event is. A wait longer than a lease (behind slow
    events) costs a second message, which the claim makes harmless. Events with a retry scheduled later, or
    claimed, are left alone.
    """
    now = utcnow()
    with single_statement(svc.engine).begin() as conn:
        conn.execute(_taken_statement(), {"event_ids": event_ids, "now": now,
                                          "lease": now + dt.timedelta(seconds=svc.settings.lease_seconds)})


def redispatch_due(svc: Services, grace: float, limit: int = SWEEP_BATCH, queued_since: float | None = None,
                   ) -> list[int]:
    """Claim the right to re-send events whose broker message may be lost, and return their ids.

    Due means: pending and overdue by more than ``grace`` (a message sent at next_attempt_at should have been
    consumed by then), or processing with an expired lease (its worker died). Both go back to ``pending``
    with next_attempt_at = now, which also marks them as just dispatched, so each sweeper run sends an event
    at most once per ``grace``. SKIP LOCKED lets several sweepers (one per worker process) share the work
    on PostgreSQL; SQLite ignores it and serialises writers anyway.
    """
    now = utcnow()
    stale = now - dt.timedelta(seconds=grace)
    if queued_since is not None:
        # A pending event made due after the oldest message still queued may well be waiting behind it: a
        # backlog, not a lost message. Re-sending it would only lengthen the queue (each sweep adding the
        # whole overdue backlog again, so one slow worker fell further behind: bench/scale.py measured 2.2
        # messages per snapshot). Only what was due before that message can have been lost.
        behind = dt.datetime.fromtimestamp(queued_since, dt.UTC) - CLOCK_TOLERANCE
        stale = min(stale, behind)
    due = (
        select(Event.id)
        .where(due_events(stale, now))
        .order_by(Event.next_attempt_at, Event.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(Event)
        .where(Event.id.in_(due.scalar_subquery()))
        .values(status=EventStatus.PENDING, next_attempt_at=now, lease_until=None, updated_at=now)
        .returning(Event.id)
    )
    with svc.sessions.begin() as s:
        return sorted(s.execute(stmt, execution_options={"synchronize_session": False}).scalars())


class CeleryDispatcher:
    """RECEIVER_QUEUE=celery: publish event ids to the broker; in `receiver worker`, also sweep the inbox.

    submit() never blocks the callback on the broker: ids go to a queue that one publisher thread sends
    (started lazily, and again after a fork). A failed publish is only logged; the event stays pending in
    the table and the sweeper sends it again once it is overdue by RECEIVER_REDISPATCH_SECONDS.
    """

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._publisher: threading.Thread | None = None
        self._pid = 0
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()
        self._celery: Any = None
        self._redis: Any = None  # the sweeper's look at the queue (oldest_queued_sent_at)
        self._queue_unreadable = False
        self._fast: celery_messages.RedisTaskPublisher | None = None  # the publisher thread's, on Redis
        self._fast_unusable = False
        self._queued = 0  # messages waiting in the broker after the publisher's last push (LPUSH's reply)
        self._queued_at = 0.0  # when that was (time.monotonic)
        self.published = 0

    def _app(self) -> Any:
        if self._celery is None:
            self._celery = make_celery(self.svc.settings)
        return self._celery

    def start(self) -> None:
        with self._lock:
            if self._publisher is not None and self._publisher.is_alive() and self._pid == os.getpid():
                return
            self._stop.clear()
            self._queue = queue.SimpleQueue()
            if self._pid != os.getpid():
                self._fast = None  # a parent's connection, inherited by fork: never written to from here
            self._pid = os.getpid()
            self._publisher = threading.Thread(target=self._publish_loop, name="receiver-publisher", daemon=True)
            self._publisher.start()

    def start_sweeper(self) -> None:
        self.start()
        with self._lock:
            if self._sweeper is None or not self._sweeper.is_alive():
                self._sweeper = threading.Thread(target=self._sweep_loop, name="receiver-sweeper", daemon=True)
                self._sweeper.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        with self._lock:
            publisher, sweeper = self._publisher, self._sweeper
            self._publisher = self._sweeper = None
        if publisher is not None and self._pid == os.getpid():
            self._queue.put(None)  # sentinel after whatever is queued: flush, then exit
            if wait:
                publisher.join(timeout=10)
        if sweeper is not None and wait:
            sweeper.join(timeout=10)
        if self._celery is not None:
            self._celery.close()
            self._celery = None
        if wait or publisher is None:
            self._drop_publisher()

    def submit(self, event_ids: Iterable[int]) -> None:
        self.start()
        for i in event_ids:
            self._queue.put(i)

    def _publish_loop(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while True:  # drain what is already queued, to share one producer connection
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            per = events_per_message(self._backlog())
            deadline = time.monotonic() + PACK_WAIT_SECONDS
            # Callbacks arrive one or two at a time, so a burst rarely fills a message by itself. With the workers
            # behind, waiting a moment for more costs no event any time: it would wait in the queue instead.
            while per > 1 and len(batch) % per and None not in batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            ids = [i for i in batch if i is not None]
            if ids:
                sent = 0
                try:
                    for chunk in (ids[i:i + PUBLISH_BATCH] for i in range(0, len(ids), PUBLISH_BATCH)):
                        self._send(chunk, per)
                        sent += len(chunk)
                except Exception as e:
                    log.warning("could not publish %d event(s) to the broker (%s); the sweeper will",
                                len(ids) - sent, e)
                    self._drop_publisher()
                self.published += sent
            if None in batch:
                return

    def _send(self, ids: list[int], per: int) -> None:
        """``ids`` in messages of ``per`` events each (the last one may carry fewer)."""
        headers = {SENT_AT: time.time()}
        fast = self._fast_publisher()
        if fast is not None:
            messages = [ids[i:i + per] for i in range(0, len(ids), per)]
            self._queued, self._queued_at = fast.publish(messages, headers), time.monotonic()
            return
        # send_task does not say how long the queue is: one event per message.
        app = self._app()
        with app.producer_or_acquire() as producer:
            for i in ids:
                app.send_task(TASK_NAME, args=[[i]], producer=producer, headers=headers)

    def _fast_publisher(self) -> celery_messages.RedisTaskPublisher | None:
        """The direct publisher on a Redis broker; None (send_task) for other brokers and for URLs whose options
        redis-py does not take, which kombu may still accept."""
        broker_url = self.svc.settings.broker_url or ""
        if self._fast is None and not self._fast_unusable and celery_messages.supports(broker_url):
            try:
                self._fast = celery_messages.RedisTaskPublisher(broker_url, TASK_NAME, QUEUE)
            except (ValueError, TypeError) as e:
                log.warning("publishing through Celery's send_task: redis-py cannot open the broker URL (%s)", e)
                self._fast_unusable = True
        return self._fast

    def _backlog(self) -> int:
        """Messages waiting in the broker as of the last push; 0 once that reading is QUEUE_READING_SECONDS old
        (a process idle since a backlog must not pack its next burst by it)."""
        fresh = time.monotonic() - self._queued_at < QUEUE_READING_SECONDS
        return self._queued if fresh else 0

    def _drop_publisher(self) -> None:
        self._queued = 0  # a failed publisher's reading says nothing of the queue it will find
        fast, self._fast = self._fast, None
        if fast is not None:
            with contextlib.suppress(Exception):
                fast.close()

    def _queued_since(self) -> float | None:
        """oldest_queued_sent_at on this broker; None (the grace alone decides) if it cannot be read."""
        try:
            if self._redis is None:
                import redis  # the celery[redis] extra

                self._redis = redis.Redis.from_url(celery_messages.redis_url(self.svc.settings.broker_url or ""),
                                                   socket_timeout=2.0, socket_connect_timeout=2.0)
            sent_at = oldest_queued_sent_at(self._redis)
            self._queue_unreadable = False
            return sent_at
        except Exception as e:
            # Once per spell, loud enough to be seen: without this look every sweep re-sends the whole backlog.
            (log.debug if self._queue_unreadable else log.warning)(
                "sweeper: could not look at the broker's queue (%s); re-sending by RECEIVER_REDISPATCH_SECONDS "
                "alone", e)
            self._queue_unreadable = True
            return None

    def _sweep_loop(self) -> None:
        # The grace applies to pending events only (a message that may be lost): long enough that a backlog in
        # the broker is not mistaken for lost messages and re-sent on top of itself. A dead worker's claim is
        # due as soon as its lease ends (no heartbeat renews it), so it is re-sent within a lease plus a sweep.
        grace = self.svc.settings.redispatch_seconds
        while not self._stop.wait(self.svc.settings.sweep_seconds):
            try:
                ids = redispatch_due(self.svc, grace, queued_since=self._queued_since())
            except Exception:
                log.exception("sweeper: could not read the inbox; will try again")
                continue
            if ids:
                log.info("sweeper: re-dispatching %d event(s)", len(ids))
                self.submit(ids)
