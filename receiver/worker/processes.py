"""RECEIVER_WORKER_POOL=process: the thread dispatcher's scheduler and sweeper, running process_event in
worker processes (spawned, each building its own Services once)."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from receiver.config import Settings
from receiver.services import Services
from receiver.worker.dispatch import ThreadDispatcher
from receiver.worker.pipeline import process_event
from receiver.worker.types import Outcome

log = logging.getLogger(__name__)

Builder = Callable[[Settings], Services]

_CHILD_SVC: Services | None = None


def _init_child(build: Builder, settings: Settings) -> None:
    """Runs once in each worker process: its own engine, gateways and stores (nothing shared across fork)."""
    global _CHILD_SVC
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when children stop
    _CHILD_SVC = build(settings)
    # Load what processing needs now: a spawned child starts with nothing imported, and the first events
    # would each pay the imports (bench/pipeline.py --pool process shows the difference).
    from PIL import Image


    Image.preinit()  # the JPEG plugin
    # A parent killed without shutting the pool down (SIGKILL, OOM) would leave its children waiting on the
    # call queue forever, holding memory and database connections: they leave with it. An event a child was
    # running stays `processing` until its lease expires (no heartbeat renews it any more), or until the next
    # `serve` on the same SQLite file takes it back at start (worker/heartbeat.py).
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="receiver-parent-watch",
                         daemon=True).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def _process_in_child(event_id: int) -> Outcome:
    assert _CHILD_SVC is not None
    return process_event(_CHILD_SVC, event_id)


class ProcessDispatcher(ThreadDispatcher):
    """The same scheduler and sweeper, running process_event in worker processes.

    Thumbnailing is CPU work around Python code that holds the GIL (oss2, SQLAlchemy), so threads share one
    core; processes use them all. Children are spawned, not forked: the parent has threads and pools.
    """

    def __init__(self, svc: Services, workers: int, sweep_seconds: float, build: Builder) -> None:
        super().__init__(svc, workers, sweep_seconds)
        self.build = build
        self.warming: list[Future[int]] = []

    def _new_pool(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_child,
                                             initargs=(self.build, self.svc.settings))
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


