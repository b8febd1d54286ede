"""Which background loops each kind of process runs, and the maintenance loop (reconcile, prune).

This is the one place that decides it; `serve`, `worker`, `demo` and gunicorn's workers all call
``start_loops`` with their role:

| role   | event workers                                     | maintenance (reconcile, prune), health alerts |
|--------|---------------------------------------------------|-----------------------------------------------|
| serve  | when RECEIVER_WORKERS > 0                         | yes                                           |
| demo   | yes                                               | yes                                           |
| worker | threads/processes; Celery starts its own sweeper  | yes                                           |
| web    | gunicorn: the dispatcher (publisher with Celery)  | no: workers run them                          |

Maintenance and health alerts run in one process per deployment at a time, whatever the roles: each loop
holds a lease. Webhook deliveries run in every process that works (serve without Celery, demo, worker; not
web), each with its own bounded threads; claims in the deliveries table share the work.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from enum import StrEnum

from receiver.db.partitions import day_name, ensure_ahead, is_partitioned
from receiver.ops.health_alerts import start_health_alerts
from receiver.ops.leases import hold, holder_name, release
from receiver.ops.push_retention import prune_push
from receiver.ops.reconcile import Reconciler
from receiver.ops.retention import apply_retention, prune
from receiver.ops.tracking import discover
from receiver.services import Services
from receiver.tiers import parse_retention
from receiver.timeutil import now_ms
from receiver.worker.deliveries import start_deliveries

log = logging.getLogger(__name__)


class Role(StrEnum):
    SERVE = "serve"
    DEMO = "demo"
    WORKER = "worker"
    WEB = "web"


def start_loops(svc: Services, role: Role) -> None:
    """Start what a process of this role runs in the background; ``svc.close()`` stops all of it."""
    s = svc.settings
    dispatcher = svc.dispatcher
    if dispatcher is not None:
        if role is Role.DEMO or (role is Role.WORKER and s.queue == "thread"):
            dispatcher.start()
        elif role in (Role.SERVE, Role.WEB) and (s.workers > 0 or (role is Role.WEB and s.queue == "celery")):
            # RECEIVER_WORKERS=0: web only; events wait in the inbox for `receiver worker` processes. Threads
            # do not survive a fork, so gunicorn calls this in each worker after it.
            dispatcher.start()
    if role is Role.DEMO or (role in (Role.SERVE, Role.WORKER) and s.queue == "thread"):
        # Webhook deliveries: their own threads in every process that works (with Celery, `receiver worker`
        # starts them once its pool has forked: worker/celery.py). Web processes never send.
        start_deliveries(svc)
    if role is not Role.WEB:
        # Web processes only record and dispatch; in a scale-out deployment the workers run maintenance.
        start_maintenance(svc)
        start_health_alerts(svc)


class Maintenance:
    """The background thread of `serve` and `receiver worker`: reconcile every RECEIVER_RECONCILE_SECONDS,
    prune hourly. Each runs in one process of the deployment at a time (a lease, see ops/leases.py)."""

    PRUNE_EVERY = 3600.0
    # A holder renews on every pass; another process takes over this many periods after it stopped.
    LEASE_PERIODS = 3

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.holder = holder_name()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="receiver-reconciler", daemon=True)
        self._ignored: set[str] = set()  # discovered jobs whose CallbackUrl is not ours (it cannot change)
        self._next_prune = time.monotonic()
        self._next_push_prune = time.monotonic()
        self._partitioned: bool | None = None  # PostgreSQL with migration 0007: keep day partitions ahead
        self._partitions_checked = -math.inf

    def start(self) -> Maintenance:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # a pass in progress ends at its next job (Reconciler.keep_going) and skips prune
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._thread.is_alive():
            return  # still inside an ICE call: keep the leases; they lapse if the process ends first
        try:
            release(self.svc, self.holder)
        except Exception:  # the database is going or gone: the leases lapse by themselves
            log.warning("could not release the maintenance leases; they lapse on their own", exc_info=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._period())

    def _holds(self, name: str, period: float) -> bool:
        return not self._stop.is_set() and hold(self.svc, name, self.holder, self.LEASE_PERIODS * period)

    def run_once(self) -> list[str]:
        """One pass: reconcile (if on and this process holds that lease), prune (if due and held). Returns
        what ran."""
        s = self.svc.settings
        ran: list[str] = []
        if s.reconcile_seconds > 0:
            try:
                if self._holds("reconcile", s.reconcile_seconds):
                    if s.discover_jobs:
                        discover(self.svc, self._ignored)
                    # Renewed before each job, so a long pass (a backfill, ICE throttling) keeps its lease,
                    # and ends if another process took it meanwhile.
                    tally = Reconciler(self.svc, sleep=self._stop.wait,
                                       keep_going=lambda: self._holds("reconcile", s.reconcile_seconds)).run()
                    ran.append("reconcile")
                    if tally.seen or tally.errors:
                        log.info("reconcile: %s", tally.summary())
            except Exception:
                log.exception("reconcile pass failed; will try again")
        try:
            # Day partitions ahead (PostgreSQL): cheap when they exist, so every pass, under the prune lease's
            # sibling so one process per deployment does the DDL.
            if self._partitions_due() and self._holds("partitions", self._period()):
                with self.svc.engine.begin() as conn:
                    made = ensure_ahead(conn, now_ms())
                self._partitions_checked = time.monotonic()
                if made:
                    ran.append("partitions")
                    log.info("partitions: made days %s", ", ".join(day_name(d) for d in made))
        except Exception:
            log.exception("partition pass failed; will try again")
        tiers = parse_retention(s.retention)
        if (tiers or s.retention_days > 0) and time.monotonic() >= self._next_prune:
            try:
                # Not holding it, ask again next pass: a clean hand-over is then taken at once.
                if self._holds("prune", self.PRUNE_EVERY):
                    self._next_prune = time.monotonic() + self.PRUNE_EVERY
                    result = (apply_retention(self.svc, tiers) if tiers
                              else prune(self.svc, s.retention_days * 86400))
                    ran.append("prune")
                    if result.snapshots or result.events or result.storyboards or any(result.thinned.values()):
                        log.info("retention: %s", result.summary())
            except Exception:
                log.exception("retention pass failed; will try again")
        if s.message_retention_days > 0 and time.monotonic() >= self._next_push_prune:
            try:
                if self._holds("prune-messages", self.PRUNE_EVERY):
                    self._next_push_prune = time.monotonic() + self.PRUNE_EVERY
                    messages, deliveries = prune_push(self.svc, s.message_retention_days * 86400)
                    ran.append("prune-messages")
                    if messages or deliveries:
                        log.info("retention: %d push messages and %d finished webhook deliveries", messages,
                                 deliveries)
            except Exception:
                log.exception("message retention pass failed; will try again")
        return ran

    def _period(self) -> float:
        s = self.svc.settings
        return s.reconcile_seconds if s.reconcile_seconds > 0 else self.PRUNE_EVERY

    def _partitions_due(self) -> bool:
        if self._partitioned is None:
            with self.svc.engine.connect() as conn:
                self._partitioned = is_partitioned(conn)
        return self._partitioned and time.monotonic() - self._partitions_checked >= self._period()


def start_maintenance(svc: Services) -> Maintenance | None:
    """Start the reconcile/retention thread (None when all are off); Services.close() stops it."""
    s = svc.settings
    # Always on PostgreSQL's partitions' account too: a deployment with reconcile and retention off still needs
    # tomorrow's partitions (the default partition would take the rows, but it is not meant to hold days).
    if (s.reconcile_seconds <= 0 and s.retention_days <= 0 and not s.retention and s.message_retention_days <= 0
            and s.is_sqlite):
        return None
    maintenance = svc.maintenance = Maintenance(svc).start()
    return maintenance
