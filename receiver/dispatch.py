"""Getting event ids to process_event: an in-process thread pool with a retry scheduler and a sweeper.

The inbox table is the truth. submit() is only a fast path; the sweeper finds anything due that no one is
running (after a restart, a lost message, or an expired lease) and runs it, so nothing depends on memory.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
from collections.abc import Iterable
from concurrent.futures import CancelledError, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select, update

from .models import Event, utcnow
from .queries import due_events

if TYPE_CHECKING:
    from .config import Settings
    from .pipeline import Outcome
    from .services import Services

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


class Dispatcher(Protocol):
    def submit(self, event_ids: Iterable[int]) -> None: ...
    def start(self) -> None: ...
    def stop(self, wait: bool = True) -> None: ...


def due_event_ids(svc: Services, limit: int = SWEEP_BATCH, exclude: set[int] | None = None) -> list[int]:
    """Events that should run now: pending and due, or processing with an expired lease."""
    now = utcnow()
    q = (
        select(Event.id)
        .where(due_events(now, now))
        .order_by(Event.next_attempt_at, Event.id)
        .limit(limit + len(exclude or ()))
    )
    with svc.readers() as s:
        ids = list(s.execute(q).scalars())
    if exclude:
        ids = [i for i in ids if i not in exclude]
    return ids[:limit]


def drain(svc: Services, timeout: float = 30.0) -> int:
    """Run every due event in this thread until none is due (tests, `receiver worker --once`)."""
    from .pipeline import process_event

    deadline = time.monotonic() + timeout
    ran = 0
    while time.monotonic() < deadline:
        ids = due_event_ids(svc)
        if not ids:
            break
        for i in ids:
            process_event(svc, i)
            ran += 1
    return ran


class ThreadDispatcher:
    def __init__(self, svc: Services, workers: int, sweep_seconds: float) -> None:
        self.svc = svc
        self.workers = max(1, workers)
        self.sweep_seconds = sweep_seconds
        self._executor: Executor | None = None
        self._cond = threading.Condition()
        self._timers: list[tuple[float, int]] = []  # (monotonic due time, event id)
        self._inflight: set[int] = set()
        self._backlog: list[int] = []  # submitted before start()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        if self._executor is not None:
            return
        self._stopping = False
        self._new_pool()
        self._thread = threading.Thread(target=self._loop, name="receiver-scheduler", daemon=True)
        self._thread.start()
        backlog, self._backlog = self._backlog, []
        self.submit(backlog)

    def _new_pool(self) -> None:
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="receiver-worker")

    def stop(self, wait: bool = True) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._executor is not None:
            # Queued but unstarted events stay pending in the table; the next process picks them up.
            self._executor.shutdown(wait=wait, cancel_futures=True)
        self._executor = None
        self._thread = None

    def submit(self, event_ids: Iterable[int]) -> None:
        with self._cond:
            for i in event_ids:
                if self._executor is None:
                    # Bounded: a web-only process never starts, and the sweeper finds these in the table anyway.
                    if len(self._backlog) < 10_000:
                        self._backlog.append(i)
                elif i not in self._inflight and not self._stopping:
                    self._inflight.add(i)
                    self._start_one(i)

    def _start_one(self, event_id: int) -> None:
        assert self._executor is not None
        self._executor.submit(self._run, event_id)

    def _schedule(self, event_id: int, delay: float) -> None:
        with self._cond:
            heapq.heappush(self._timers, (time.monotonic() + delay, event_id))
            self._cond.notify_all()

    def _run(self, event_id: int) -> None:
        from .pipeline import process_event

        try:
            outcome = process_event(self.svc, event_id)
        except Exception:
            # process_event records its own failures; reaching here means the database itself failed.
            log.exception("event %s: processing crashed; the sweeper will retry it", event_id)
            outcome = None
        finally:
            with self._cond:
                self._inflight.discard(event_id)
        if outcome is not None and outcome.retry_in is not None:
            self._schedule(event_id, outcome.retry_in)

    def _loop(self) -> None:
        next_sweep = time.monotonic()
        while True:
            due: list[int] = []
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    due.append(heapq.heappop(self._timers)[1])
                wake = next_sweep
                if self._timers:
                    wake = min(wake, self._timers[0][0])
                if not due and now < next_sweep:
                    self._cond.wait(timeout=max(0.0, wake - now))
                    continue
            if due:
                self.submit(due)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.sweep_seconds
                try:
                    with self._cond:
                        busy = set(self._inflight)
                    self.submit(due_event_ids(self.svc, exclude=busy))
                except Exception:
                    log.exception("sweeper: could not read the inbox; will try again")

    def idle(self) -> bool:
        with self._cond:
            return not self._inflight and not self._backlog


def redispatch_due(svc: Services, grace: float, limit: int = SWEEP_BATCH) -> list[int]:
    """Claim the right to re-send events whose broker message may be lost, and return their ids.

    Due means: pending and overdue by more than ``grace`` (a message sent at next_attempt_at should have been
    consumed by then), or processing with an expired lease (its worker died). Both go back to ``pending``
    with next_attempt_at = now, which also marks them as just dispatched, so each sweeper run sends an event
    at most once per ``grace``. SKIP LOCKED lets several sweepers (one per worker process) share the work
    on PostgreSQL; SQLite ignores it and serialises writers anyway.
    """
    now = utcnow()
    stale = now - dt.timedelta(seconds=grace)
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
        .values(status="pending", next_attempt_at=now, lease_until=None, updated_at=now)
        .returning(Event.id)
    )
    with svc.sessions.begin() as s:
        return sorted(s.execute(stmt, execution_options={"synchronize_session": False}).scalars())


class CeleryDispatcher:
    """RECEIVER_QUEUE=celery: publish event ids to the broker; in `receiver worker`, also sweep the inbox.

    submit() never blocks the callback on the broker: ids go to a queue that one publisher thread sends
    (started lazily, and again after a fork). A failed publish is only logged; the event stays pending in
    the table and the sweeper sends it again once it is overdue by RECEIVER_LEASE_SECONDS.
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
        self.published = 0

    def _app(self) -> Any:
        if self._celery is None:
            from .celery_app import make_celery

            self._celery = make_celery(self.svc.settings)
        return self._celery

    def start(self) -> None:
        with self._lock:
            if self._publisher is not None and self._publisher.is_alive() and self._pid == os.getpid():
                return
            self._stop.clear()
            self._queue = queue.SimpleQueue()
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

    def submit(self, event_ids: Iterable[int]) -> None:
        self.start()
        for i in event_ids:
            self._queue.put(i)

    def _publish_loop(self) -> None:
        from .celery_app import TASK_NAME

        while True:
            first = self._queue.get()
            batch = [first]
            while True:  # drain what is already queued, to share one producer connection
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ids = [i for i in batch if i is not None]
            if ids:
                try:
                    app = self._app()
                    with app.producer_or_acquire() as producer:
                        for i in ids:
                            app.send_task(TASK_NAME, args=[i], producer=producer)
                            self.published += 1
                except Exception as e:
                    log.warning("could not publish %d event(s) to the broker (%s); the sweeper will", len(ids), e)
            if None in batch:
                return

    def _sweep_loop(self) -> None:
        grace = self.svc.settings.lease_seconds
        while not self._stop.wait(self.svc.settings.sweep_seconds):
            try:
                ids = redispatch_due(self.svc, grace)
            except Exception:
                log.exception("sweeper: could not read the inbox; will try again")
                continue
            if ids:
                log.info("sweeper: re-dispatching %d event(s)", len(ids))
                self.submit(ids)


_CHILD_SVC: Services | None = None


def _init_child(settings: Settings) -> None:
    """Runs once in each worker process: its own engine, gateways and stores (nothing shared across fork)."""
    global _CHILD_SVC
    from .services import build_services

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when children stop
    _CHILD_SVC = build_services(settings)
    # Load what processing needs now: a spawned child starts with nothing imported, and the first events
    # would each pay ~1 s of imports (bench/pipeline.py --pool process: 0.46x -> 0.54x of the kernel).
    from PIL import Image

    from . import pipeline  # noqa: F401 - ingest, thumbnails, signals (numpy), oss

    Image.preinit()  # the JPEG plugin
    # A parent killed without shutting the pool down (SIGKILL, OOM) would leave its children waiting on the
    # call queue forever, holding memory and database connections: they leave with it. An event a child was
    # running stays `processing` until its lease expires, as after any crash.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="receiver-parent-watch",
                         daemon=True).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def _process_in_child(event_id: int) -> Outcome:
    from .pipeline import process_event

    assert _CHILD_SVC is not None
    return process_event(_CHILD_SVC, event_id)


class ProcessDispatcher(ThreadDispatcher):
    """The same scheduler and sweeper, running process_event in worker processes.

    Thumbnailing is CPU work around Python code that holds the GIL (oss2, SQLAlchemy), so threads share one
    core; processes use them all. Children are spawned, not forked: the parent has threads and pools.
    """

    def __init__(self, svc: Services, workers: int, sweep_seconds: float) -> None:
        super().__init__(svc, workers, sweep_seconds)
        self.warming: list[Future[int]] = []

    def _new_pool(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_child,
                                             initargs=(self.svc.settings,))
        # The executor starts a child only when work arrives and none is idle: one call per worker, submitted
        # back to back, starts them all now (each runs _init_child), not under the first callbacks.
        self.warming = [self._executor.submit(os.getpid) for _ in range(self.workers)]

    def _start_one(self, event_id: int) -> None:
        assert self._executor is not None
        try:
            future = self._executor.submit(_process_in_child, event_id)
        except BrokenProcessPool:
            log.error("worker pool broken (a worker died); starting a new one")
            self._new_pool()
            future = self._executor.submit(_process_in_child, event_id)
        future.add_done_callback(lambda f: self._done(event_id, f))

    def _done(self, event_id: int, future: Future[Outcome]) -> None:
        outcome: Outcome | None = None
        try:
            outcome = future.result()
        except CancelledError:
            pass
        except Exception:
            # A killed child (BrokenProcessPool) or a database failure: the lease and the sweeper recover it.
            log.exception("event %s: worker process failed; the sweeper will retry it", event_id)
        with self._cond:
            self._inflight.discard(event_id)
        if outcome is not None and outcome.retry_in is not None:
            self._schedule(event_id, outcome.retry_in)


def make_dispatcher(svc: Services) -> Dispatcher:
    if svc.settings.queue == "celery":
        return CeleryDispatcher(svc)
    if svc.settings.worker_pool == "process":
        return ProcessDispatcher(svc, svc.settings.workers, svc.settings.sweep_seconds)
    return ThreadDispatcher(svc, svc.settings.workers, svc.settings.sweep_seconds)


def wait_idle(svc: Services, timeout: float) -> bool:
    """Until no event is pending-and-due or processing (tests and the demo)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with svc.readers() as s:
            busy = s.execute(
                select(Event.id).where(Event.status.in_(("pending", "processing"))).limit(1)
            ).first()
        if busy is None:
            return True
        time.sleep(0.02)
    return False


__all__ = ["CeleryDispatcher", "Dispatcher", "ThreadDispatcher", "drain", "due_event_ids", "make_dispatcher",
           "redispatch_due", "wait_idle"]
