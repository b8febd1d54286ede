"""Getting event ids to process_event: an in-process thread pool with a retry scheduler and a sweeper.

The inbox table is the truth. submit() is only a fast path; the sweeper finds anything due that no one is
running (after a restart, a lost message, or an expired lease) and runs it, so nothing depends on memory.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Executor, ThreadPoolExecutor

from sqlalchemy import select

from receiver.db.models import Event, EventStatus, utcnow
from receiver.db.queries import due_events
from receiver.services import Services
from receiver.worker.heartbeat import reclaim_orphans
from receiver.worker.pipeline import process_event

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


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
        try:
            # On a SQLite file with no other live worker process: a previous run's claims are orphans; take
            # them back now rather than after their leases (the first sweep, just below, runs them).
            reclaim_orphans(self.svc)
        except Exception:
            log.exception("could not take back a previous run's claims; they expire with their leases")
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


def wait_idle(svc: Services, timeout: float) -> bool:
    """Until no event is pending-and-due or processing (tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with svc.readers() as s:
            busy = s.execute(
                select(Event.id).where(Event.status.in_((EventStatus.PENDING, EventStatus.PROCESSING))).limit(1)
            ).first()
        if busy is None:
            return True
        time.sleep(0.02)
    return False
