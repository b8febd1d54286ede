"""The webhook delivery engine of a process: one loop thread that fans out messages and hands due deliveries
to a bounded pool of its own threads (RECEIVER_WEBHOOK_WORKERS).

Apart from the event workers on purpose: an attempt may take up to 10 s (a slow or dead subscriber), and
that must never delay events or callbacks. The loop claims no more deliveries than it has free threads, and
at most PER_SUBSCRIPTION at once for any one subscription, so one dead subscriber holds a few threads at
worst and the others keep being served. Nothing lives only in memory: every pass reads the tables, so
after a restart, a crash or on another process, what is due is found and sent (leases keep two processes
from attempting the same delivery at once).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from receiver.adapters.webhooks import WebhookSender
from receiver.services import Services
from receiver.worker.webhooks import deliver, due_deliveries, fan_out

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
PER_SUBSCRIPTION = 2


class DeliveryEngine:
    def __init__(self, svc: Services, workers: int, sender: WebhookSender | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.svc = svc
        self.workers = max(1, workers)
        self.sender = sender or WebhookSender(allow_private=svc.settings.webhook_allow_private)
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._inflight: dict[int, str] = {}  # delivery id -> subscription id
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> DeliveryEngine:
        if self._thread is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="receiver-webhook")
            self._thread = threading.Thread(target=self._loop, name="receiver-webhooks", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Look now rather than at the next poll (a message was just committed)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:
            # Attempts in flight finish (each within 10 s); queued ones are not started and stay pending.
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._thread = self._pool = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("webhooks: could not read or fan out messages; will try again")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def run_once(self) -> int:
        """Fan out what is new, then start as many due deliveries as there are free threads."""
        while fan_out(self.svc):
            pass
        with self._lock:
            free = self.workers - len(self._inflight)
            busy = set(self._inflight)
            per_sub = Counter(self._inflight.values())
        if free <= 0:
            return 0
        started = 0
        # Read more than there is room for: the first rows may all belong to one subscriber that is at its cap.
        for row in due_deliveries(self.svc, free * 4, busy):
            if started >= free:
                break
            if per_sub[row.subscription_id] >= PER_SUBSCRIPTION:
                continue
            per_sub[row.subscription_id] += 1
            with self._lock:
                self._inflight[row.id] = row.subscription_id
            assert self._pool is not None
            self._pool.submit(self._run, row.id)
            started += 1
        return started

    def _run(self, delivery_id: int) -> None:
        try:
            deliver(self.svc, self.sender, delivery_id)
        except Exception:
            # deliver records every subscriber failure itself; this is the database: the lease runs out and
            # the delivery is found again.
            log.exception("delivery %s: could not be attempted or recorded; it will be retried", delivery_id)
        finally:
            with self._lock:
                self._inflight.pop(delivery_id, None)
            self._wake.set()  # a thread is free: there may be more due


def start_deliveries(svc: Services) -> DeliveryEngine:
    """Start this process's delivery engine; Services.close() stops it."""
    engine = DeliveryEngine(svc, svc.settings.webhook_workers).start()
    svc.on_close.insert(0, engine.stop)
    return engine
