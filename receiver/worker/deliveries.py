"""The webhook delivery engine of a process: one loop thread that fans out messages and hands due deliveries
to a bounded pool of its own threads (RECEIVER_WEBHOOK_WORKERS).

Claims and outcomes are written in batches (one transaction each per pass of the loop), not per delivery:
on SQLite every write transaction takes the lock the callbacks need.

Apart from the event workers on purpose: an attempt may take up to 10 s (a slow or dead subscriber), and
that must never delay events or callbacks. The loop claims at most QUEUED_PER_THREAD deliveries per thread, and
for any one subscription at most half the threads' worth (2 at least), so one dead subscriber holds half
the threads at worst and the others keep being served. Nothing lives only in memory: every pass reads the tables, so
after a restart, a crash or on another process, what is due is found and sent (leases keep two processes
from attempting the same delivery at once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from receiver.adapters.webhooks import Attempt, WebhookSender
from receiver.services import Services
from receiver.worker.webhooks import Claimed, attempt, claim, due_deliveries, fan_out, record

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# At least this long between passes, however many attempts finish: each pass is up to three short write
# transactions (record, fan out, claim), and on SQLite they take the lock callbacks need; the pass claims
# enough to keep every thread busy until the next one.
MIN_PASS_SECONDS = 0.05
QUEUED_PER_THREAD = 2


class DeliveryEngine:
    def __init__(self, svc: Services, workers: int, sender: WebhookSender | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.svc = svc
        self.workers = max(1, workers)
        self.sender = sender or WebhookSender(allow_private=svc.settings.webhook_allow_private)
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._inflight: dict[int, str] = {}  # delivery id -> subscription id, from claim until recorded
        self._finished: list[tuple[Claimed, Attempt]] = []
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
            # Attempts in flight finish (each within 10 s) and are recorded; claimed ones never started keep
            # their claim until it runs out (15 s), then any process attempts them.
            self._pool.shutdown(wait=True, cancel_futures=True)
            try:
                self._record_finished()
            except Exception:
                log.warning("could not record the last webhook attempts; they will be retried", exc_info=True)
        self._thread = self._pool = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:
                log.exception("webhooks: could not read or fan out messages; will try again")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            self._stop.wait(max(0.0, started + min(MIN_PASS_SECONDS, self.poll_seconds) - time.monotonic()))

    def run_once(self) -> int:
        """Record what finished, fan out what is new, then claim (one transaction) and start as many due
        deliveries as there are free threads."""
        self._record_finished()
        while fan_out(self.svc):
            pass
        with self._lock:
            free = self.workers * QUEUED_PER_THREAD - len(self._inflight)
            busy = set(self._inflight)
            per_sub = Counter(self._inflight.values())
        if free <= 0:
            return 0
        cap = max(2, self.workers // 2)
        chosen: list[int] = []
        # Read more than there is room for: the first rows may all belong to one subscriber that is at its cap.
        for row in due_deliveries(self.svc, free * 4, busy):
            if len(chosen) >= free:
                break
            if per_sub[row.subscription_id] >= cap:
                continue
            per_sub[row.subscription_id] += 1
            chosen.append(row.id)
        claimed = claim(self.svc, chosen)
        assert self._pool is not None
        for c in claimed:
            with self._lock:
                self._inflight[c.id] = c.subscription_id
            self._pool.submit(self._run, c)
        return len(claimed)

    def _run(self, c: Claimed) -> None:
        try:
            result = attempt(self.sender, c)
        except Exception as e:  # a bug in the sender: still an attempt that failed, recorded as such
            log.exception("delivery %s: the attempt raised", c.id)
            result = Attempt(False, None, f"internal error: {type(e).__name__}")
        with self._lock:
            self._finished.append((c, result))
        self._wake.set()  # the loop records it (with others that finished meanwhile) and starts the next

    def _record_finished(self) -> None:
        with self._lock:
            batch, self._finished = self._finished, []
        if not batch:
            return
        try:
            record(self.svc, batch)
        except Exception:
            # The database: these claims run out and the deliveries are attempted again (same webhook-id).
            log.exception("could not record %d webhook attempt(s); they will be retried", len(batch))
        finally:
            with self._lock:
                for c, _ in batch:
                    self._inflight.pop(c.id, None)


def start_deliveries(svc: Services) -> DeliveryEngine:
    """Start this process's delivery engine; Services.close() stops it."""
    engine = DeliveryEngine(svc, svc.settings.webhook_workers).start()
    svc.on_close.insert(0, engine.stop)
    return engine
