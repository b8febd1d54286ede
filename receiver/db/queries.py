"""The read side's SQL. Every query here is served by an index; none scans a job's whole history.

- latest per job: a correlated ``ORDER BY captured_at_ms DESC, id DESC LIMIT 1`` per job row, walked
  backwards on ``ix_snapshots_job_time`` (job_id, captured_at_ms, id): one statement for the whole page.
- history: keyset on (captured_at_ms, id), the same index, no OFFSET.
- nearest: the last snapshot at or before t and the first after it: two index probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session, aliased

from receiver.db.models import EVENT_STATUSES, Event, EventStatus, Job, Snapshot


def due_events(pending_by: Any, now: Any) -> ColumnElement[bool]:
    """Events a worker should run: pending with next_attempt_at at or before ``pending_by``, or processing
    with a lease that ran out before ``now`` (its worker died). One definition for the sweeper, the
    broker re-dispatch and the queue-depth gauge."""
    return or_(
        (Event.status == EventStatus.PENDING) & (Event.next_attempt_at <= pending_by),
        (Event.status == EventStatus.PROCESSING) & (Event.lease_until < now),
    )


def _latest_id(job_id_col: object) -> Select[Any]:
    return (
        select(Snapshot.id)
        .where(Snapshot.job_id == job_id_col)
        .order_by(Snapshot.captured_at_ms.desc(), Snapshot.id.desc())
        .limit(1)
    )


def jobs_with_latest(session: Session, after_job_id: str | None, limit: int) -> list[tuple[Job, Snapshot | None]]:
    """A page of jobs (by job_id) each with its newest snapshot, in one statement (+ one for thumbnails)."""
    latest = aliased(Snapshot)
    q = (
        select(Job, latest)
        .outerjoin(latest, latest.id == _latest_id(Job.job_id).scalar_subquery())
        .order_by(Job.job_id)
        .limit(limit)
    )
    if after_job_id is not None:
        q = q.where(Job.job_id > after_job_id)
    return [(job, snap) for job, snap in session.execute(q)]


def snapshot_by_id(session: Session, snapshot_id: int) -> Snapshot | None:
    """By id alone (the mapper's identity is (id, captured_at_ms), the partition key being part of it)."""
    return session.execute(select(Snapshot).where(Snapshot.id == snapshot_id)).scalar_one_or_none()


def latest_snapshot(session: Session, job_id: str) -> Snapshot | None:
    return session.execute(
        select(Snapshot).where(Snapshot.id == _latest_id(job_id).scalar_subquery())
    ).scalar_one_or_none()


@dataclass(frozen=True)
class HistoryQuery:
    job_id: str
    since: int | None
    until: int | None
    order: str  # asc | desc
    after: tuple[int, int] | None  # keyset position (captured_at_ms, id) of the previous page's last row
    limit: int


def history(session: Session, q: HistoryQuery) -> list[Snapshot]:
    """Up to ``q.limit`` rows; the caller asks for one more than it shows to learn whether a page follows."""
    stmt = select(Snapshot).where(Snapshot.job_id == q.job_id)
    if q.since is not None:
        stmt = stmt.where(Snapshot.captured_at_ms >= q.since)
    if q.until is not None:
        stmt = stmt.where(Snapshot.captured_at_ms < q.until)
    if q.after is not None:
        ts, sid = q.after
        # Rows inserted while a client pages land either before its position (not shown again) or after it
        # (shown once): no row is skipped or repeated, whatever arrives in between.
        if q.order == "desc":
            stmt = stmt.where((Snapshot.captured_at_ms < ts) | ((Snapshot.captured_at_ms == ts) & (Snapshot.id < sid)))
        else:
            stmt = stmt.where((Snapshot.captured_at_ms > ts) | ((Snapshot.captured_at_ms == ts) & (Snapshot.id > sid)))
    if q.order == "desc":
        stmt = stmt.order_by(Snapshot.captured_at_ms.desc(), Snapshot.id.desc())
    else:
        stmt = stmt.order_by(Snapshot.captured_at_ms.asc(), Snapshot.id.asc())
    return list(session.execute(stmt.limit(q.limit)).scalars())


def nearest(session: Session, job_id: str, t: int) -> Snapshot | None:
    """The snapshot closest to ``t``; on a tie the earlier one (what was on screen at t)."""
    before = session.execute(
        select(Snapshot).where(Snapshot.job_id == job_id, Snapshot.captured_at_ms <= t)
        .order_by(Snapshot.captured_at_ms.desc(), Snapshot.id.desc()).limit(1)
    ).scalar_one_or_none()
    if before is not None and before.captured_at_ms == t:
        return before
    after = session.execute(
        select(Snapshot).where(Snapshot.job_id == job_id, Snapshot.captured_at_ms > t)
        .order_by(Snapshot.captured_at_ms.asc(), Snapshot.id.asc()).limit(1)
    ).scalar_one_or_none()
    if before is None or after is None:
        return before or after
    return before if t - before.captured_at_ms <= after.captured_at_ms - t else after


@dataclass(frozen=True)
class JobCounters:
    snapshots: int
    first_captured_at_ms: int | None
    last_captured_at_ms: int | None
    events: dict[str, int]


def job_counters(session: Session, job_id: str) -> JobCounters:
    n, first, last = session.execute(
        select(func.count(), func.min(Snapshot.captured_at_ms), func.max(Snapshot.captured_at_ms))
        .where(Snapshot.job_id == job_id)
    ).one()
    by_status = dict.fromkeys(EVENT_STATUSES, 0)
    for status, count in session.execute(
        select(Event.status, func.count()).where(Event.job_id == job_id).group_by(Event.status)
    ):
        by_status[status] = count
    return JobCounters(int(n), first, last, by_status)


def events_by_status(session: Session) -> dict[str, int]:
    out = dict.fromkeys(EVENT_STATUSES, 0)
    for status, count in session.execute(select(Event.status, func.count()).group_by(Event.status)):
        out[status] = count
    return out
