"""Health alerts: the loop that sends `stream.health_changed` (product.md 8).

One process per deployment (a lease, ops/leases.py) evaluates every job that reported in the last 24 h or
is tracked, once per job interval, with the status function the API uses for a job's ``health``
(``web/health_query.statuses``: the status at now). The hysteresis (media/hysteresis.py) decides when a new
status is announced; the message is written by ``outbox.record`` in the transaction that updates the job's
``health_states`` row, so a crash neither loses nor repeats an announcement.

The loop ticks every min(job interval) seconds (at least 1 s, at most 60 s); a job is evaluated on a tick
once its own interval has elapsed since its last evaluation. When each job was last evaluated is kept in
memory: ``health_states`` is written only when a job's hysteresis state changes (a new candidate, a longer
streak, an announcement), so steady jobs cost no writes. A process that takes the lease over evaluates every
job on its first tick, from the states in the table, so a hand-over announces nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, select, update

from receiver.db import outbox
from receiver.db.engine import insert_for
from receiver.db.models import HealthState, Job, MessageType
from receiver.media.health import Thresholds
from receiver.media.hysteresis import Alert, Change, step
from receiver.ops.leases import hold, holder_name, release
from receiver.services import Services
from receiver.timeutil import dt_to_iso
from receiver.web import health_query as hq
from receiver.web.health import DEFAULT_WINDOW_MS, health_answer

log = logging.getLogger(__name__)

LEASE = "health-alerts"
REPORTED_WITHIN_MS = 24 * 3600 * 1000
MIN_TICK, MAX_TICK, IDLE_TICK = 1.0, 60.0, 5.0
CHUNK = 200  # jobs per newest-frames statement


class HealthAlerts:
    LEASE_PERIODS = 3
    MIN_LEASE_SECONDS = 10.0

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.holder = holder_name()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="receiver-health-alerts", daemon=True)
        self._evaluated: dict[str, int] = {}  # job id -> when this process last evaluated it (Unix ms)
        self.tick = IDLE_TICK

    def start(self) -> HealthAlerts:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            release(self.svc, self.holder)
        except Exception:  # the database is going or gone: the lease lapses by itself
            log.warning("could not release the health alert lease; it lapses on its own", exc_info=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("health alert pass failed; will try again")
            self._stop.wait(self.tick)

    def run_once(self, now: dt.datetime | None = None) -> list[Change]:
        """One tick: evaluate the due jobs if this process holds the lease; returns what was announced."""
        now = now or dt.datetime.now(dt.UTC)
        lease = max(self.MIN_LEASE_SECONDS, self.LEASE_PERIODS * self.tick)
        if not hold(self.svc, LEASE, self.holder, lease, now=None):
            self._evaluated.clear()  # another process evaluates; on a take-over, start afresh
            return []
        now_ms = int(now.timestamp() * 1000)
        with self.svc.readers() as s:
            jobs = list(s.execute(select(Job)).scalars())
        intervals = {j.job_id: hq.interval_ms(j) for j in jobs}
        self.tick = min([MAX_TICK, *(i / 1000 for i in intervals.values())]) if jobs else IDLE_TICK
        self.tick = max(MIN_TICK, self.tick)
        slack = self.tick * 500  # half a tick: a job due just after this tick is evaluated on it, not a tick late
        due = [j for j in jobs if now_ms - self._evaluated.get(j.job_id, -REPORTED_WITHIN_MS) + slack
               >= intervals[j.job_id]]
        changes: list[Change] = []
        for i in range(0, len(due), CHUNK):
            changes += self._evaluate(due[i:i + CHUNK], now, now_ms)
        return changes

    def _evaluate(self, jobs: Sequence[Job], now: dt.datetime, now_ms: int) -> list[Change]:
        t = Thresholds.from_settings(self.svc.settings)
        ids = [j.job_id for j in jobs]
        with self.svc.readers() as s:
            newest = hq.newest_frames(s, ids, hq.frames_needed(t))
            watched = [j for j in jobs if j.tracked or (newest[j.job_id]
                                                       and newest[j.job_id][0].captured_at_ms
                                                       >= now_ms - REPORTED_WITHIN_MS)]
            observed = hq.statuses(s, watched, t, now_ms, newest)
            states = {h.job_id: h for h in s.execute(select(HealthState).where(HealthState.job_id.in_(ids)))
                      .scalars()}
        changes = []
        for job in watched:
            self._evaluated[job.job_id] = now_ms
            row = states.get(job.job_id)
            before = _alert(row)
            after, change = step(before, observed[job.job_id], self.svc.settings.health_confirm, now)
            if after == before:
                continue
            if self._write(job, row, after, change, now, now_ms) and change is not None:
                changes.append(change)
        return changes

    def _write(self, job: Job, row: HealthState | None, after: Alert, change: Change | None, now: dt.datetime,
               now_ms: int) -> bool:
        data = None
        if change is not None:
            t = Thresholds.from_settings(self.svc.settings)
            with self.svc.readers() as s:
                answer = health_answer(s, job, now_ms - DEFAULT_WINDOW_MS, now_ms, now_ms, t)
            data = {"job_id": job.job_id, "account": job.account, "previous": change.previous, "status": change.status,
                    "since": dt_to_iso(change.since), "health": answer}
        values = {"status": after.status, "since": after.since, "candidate": after.candidate,
                  "candidate_since": after.candidate_since, "streak": after.streak, "evaluated_at": now}
        with self.svc.engine.begin() as conn:
            if not _store(conn, job.job_id, row, values):
                log.info("health state of %s changed under us (a lease hand-over); not announcing", job.job_id)
                return False
            if data is not None:
                outbox.record(conn, MessageType.HEALTH_CHANGED, data, job_id=job.job_id, account=job.account, now=now)
        return True


def _alert(row: HealthState | None) -> Alert | None:
    if row is None:
        return None
    return Alert(row.status, row.since, row.candidate, row.candidate_since, row.streak)


def _store(conn: Connection, job_id: str, row: HealthState | None, values: Mapping[str, object]) -> bool:
    """Write the new state if the row is still what this evaluation read (compare-and-set)."""
    if row is None:
        inserted = conn.execute(insert_for(conn.dialect.name)(HealthState).values(job_id=job_id, **values)
                                .on_conflict_do_nothing().returning(HealthState.job_id)).first()
        return inserted is not None
    return conn.execute(
        update(HealthState).where(HealthState.job_id == job_id,
                                  HealthState.status.is_not_distinct_from(row.status),
                                  HealthState.candidate.is_not_distinct_from(row.candidate),
                                  HealthState.streak == row.streak)
        .values(**values)
    ).rowcount == 1


def start_health_alerts(svc: Services) -> HealthAlerts:
    """Start the loop; Services.close() stops it (and hands its lease over)."""
    alerts = HealthAlerts(svc).start()
    svc.on_close.insert(0, alerts.stop)
    return alerts
