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
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from receiver.db.models import EVENT_STATUSES, Event, EventStatus, Job, Snapshot, Thumbnail
from receiver.tiers import DAY_MS
from receiver.timeutil import now_ms


def due_events(pending_by: Any, now: Any) -> ColumnElement[bool]:
    """Events a worker should run: pending with next_attempt_at at or before ``pending_by``, or with a lease
    that ran out before ``now``: processing (its worker died), or pending in a message a Celery worker took
    (celery.mark_taken) and never got to. One definition for the sweeper, the broker re-dispatch and the
    queue-depth gauge."""
    return or_(
        (Event.status == EventStatus.PENDING) & (Event.next_attempt_at <= pending_by),
        Event.status.in_((EventStatus.PROCESSING, EventStatus.PENDING)) & (Event.lease_until < now),
    )


# On PostgreSQL snapshots are partitioned by day (migration 0007) and an index probe costs one descent per
# partition the planner keeps, so each query first looks in a bounded window of days (the planner drops the
# other days' partitions) and only widens when the window did not hold the answer. The answers are exactly the
# unbounded queries' on every backend; SQLite runs the same statements.
RECENT_MS = 2 * DAY_MS  # "latest" looks from the start of the day before yesterday first
NEAR_MS = DAY_MS  # nearest and history pages look within a day of their position first


def _newest(col: Any, job_id_col: object, lo: int | None, hi: int | None) -> Any:
    q = select(col).where(Snapshot.job_id == job_id_col)
    if lo is not None:
        q = q.where(Snapshot.captured_at_ms >= lo)
    if hi is not None:
        q = q.where(Snapshot.captured_at_ms < hi)
    return q.order_by(Snapshot.captured_at_ms.desc(), Snapshot.id.desc()).limit(1).scalar_subquery()


def _latest(col: Any, job_id_col: object, now: int) -> Any:
    """The newest row's ``col``: from the recent days, else (COALESCE evaluates lazily) from the older ones."""
    recent = now // DAY_MS * DAY_MS - RECENT_MS
    return func.coalesce(_newest(col, job_id_col, recent, None), _newest(col, job_id_col, None, recent))


def jobs_with_latest(session: Session, after_job_id: str | None, limit: int,
                     account: str | None = None) -> list[tuple[Job, Snapshot | None]]:
    """A page of jobs (by job_id) each with its newest snapshot: one statement for the jobs and the keys of
    their newest snapshots, one for those snapshots (by id and captured_at_ms, so PostgreSQL reads only their
    days' partitions), one for their thumbnails. (Joining the snapshots in the first statement put the
    per-job subqueries inside every partition's scan: thousands of plan nodes at 60 partitions.)"""
    now = now_ms()
    q = (
        select(Job, _latest(Snapshot.id, Job.job_id, now), _latest(Snapshot.captured_at_ms, Job.job_id, now))
        .order_by(Job.job_id)
        .limit(limit)
    )
    if after_job_id is not None:
        q = q.where(Job.job_id > after_job_id)
    if account is not None:
        q = q.where(Job.account == account)  # ix_jobs_account_job_id
    page = session.execute(q).all()
    keys = {(sid, at) for _, sid, at in page if sid is not None}
    snaps: dict[tuple[int, int], Snapshot] = {}
    if keys:
        for snap in session.execute(select(Snapshot).where(
                Snapshot.id.in_(sorted({k[0] for k in keys})),
                Snapshot.captured_at_ms.in_(sorted({k[1] for k in keys})))).scalars():
            snaps[(snap.id, snap.captured_at_ms)] = snap
    attach_thumbnails(session, list(snaps.values()))
    return [(job, snaps.get((sid, at))) for job, sid, at in page]


def attach_thumbnails(session: Session, snaps: list[Snapshot]) -> None:
    """Load the thumbnails of ``snaps`` in one statement that names their days (``captured_at_ms IN``), so
    PostgreSQL reads only those days' partitions; Snapshot.thumbnails then needs no query of its own."""
    todo = [s for s in snaps if "thumbnails" not in s.__dict__]
    if not todo:
        return
    found: dict[tuple[int, int], list[Thumbnail]] = {(s.id, s.captured_at_ms): [] for s in todo}
    rows = session.execute(select(Thumbnail).where(
        Thumbnail.snapshot_id.in_(sorted({s.id for s in todo})),
        Thumbnail.captured_at_ms.in_(sorted({s.captured_at_ms for s in todo})),
    ).order_by(Thumbnail.snapshot_id, Thumbnail.width.desc())).scalars()
    for t in rows:
        if (t.snapshot_id, t.captured_at_ms) in found:
            found[(t.snapshot_id, t.captured_at_ms)].append(t)
    for snap in todo:
        set_committed_value(snap, "thumbnails", found[(snap.id, snap.captured_at_ms)])


def _one(session: Session, stmt: Select[Any]) -> Snapshot | None:
    snap = session.execute(stmt.limit(1)).scalar_one_or_none()
    if snap is not None:
        attach_thumbnails(session, [snap])
    return snap


def snapshot_by_id(session: Session, snapshot_id: int) -> Snapshot | None:
    """By id alone (the mapper's identity is (id, captured_at_ms), the partition key being part of it)."""
    return _one(session, select(Snapshot).where(Snapshot.id == snapshot_id))


def latest_snapshot(session: Session, job_id: str) -> Snapshot | None:
    recent = now_ms() // DAY_MS * DAY_MS - RECENT_MS
    newest = select(Snapshot).where(Snapshot.job_id == job_id).order_by(Snapshot.captured_at_ms.desc(),
                                                                        Snapshot.id.desc())
    return (_one(session, newest.where(Snapshot.captured_at_ms >= recent))
            or _one(session, newest.where(Snapshot.captured_at_ms < recent)))


@dataclass(frozen=True)
class HistoryQuery:
    job_id: str
    since: int | None
    until: int | None
    order: str  # asc | desc
    after: tuple[int, int] | None  # keyset position (captured_at_ms, id) of the previous page's last row
    limit: int


def _history_page(session: Session, q: HistoryQuery, after: tuple[int, int] | None, limit: int,
                  window: int | None) -> list[Snapshot]:
    stmt = select(Snapshot).where(Snapshot.job_id == q.job_id)
    if q.since is not None:
        stmt = stmt.where(Snapshot.captured_at_ms >= q.since)
    if q.until is not None:
        stmt = stmt.where(Snapshot.captured_at_ms < q.until)
    if window is not None:
        stmt = stmt.where(Snapshot.captured_at_ms >= window if q.order == "desc" else Snapshot.captured_at_ms < window)
    if after is not None:
        ts, sid = after
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
    return list(session.execute(stmt.limit(limit)).scalars())


def history(session: Session, q: HistoryQuery) -> list[Snapshot]:
    """Up to ``q.limit`` rows; the caller asks for one more than it shows to learn whether a page follows.

    The page is read within a day of where it starts first; a page that day does not fill goes on from its
    last row without that bound (keyset, so the two parts join exactly)."""
    start = q.after[0] if q.after is not None else (q.until if q.order == "desc" else q.since)
    rows: list[Snapshot] = []
    window = None
    if start is not None:
        window = start - NEAR_MS if q.order == "desc" else start + NEAR_MS
        rows = _history_page(session, q, q.after, q.limit, window)
    if len(rows) < q.limit:
        after = (rows[-1].captured_at_ms, rows[-1].id) if rows else q.after
        rows += _history_page(session, q, after, q.limit - len(rows), None)
    attach_thumbnails(session, rows)
    return rows


def nearest(session: Session, job_id: str, t: int) -> Snapshot | None:
    """The snapshot closest to ``t``; on a tie the earlier one (what was on screen at t)."""
    def first(q: Select[Any], near: Any, far: Any) -> Snapshot | None:
        return _one(session, q.where(near)) or _one(session, q.where(far))

    before = first(select(Snapshot).where(Snapshot.job_id == job_id, Snapshot.captured_at_ms <= t)
                   .order_by(Snapshot.captured_at_ms.desc(), Snapshot.id.desc()),
                   Snapshot.captured_at_ms >= t - NEAR_MS, Snapshot.captured_at_ms < t - NEAR_MS)
    if before is not None and before.captured_at_ms == t:
        return before
    after = first(select(Snapshot).where(Snapshot.job_id == job_id, Snapshot.captured_at_ms > t)
                  .order_by(Snapshot.captured_at_ms.asc(), Snapshot.id.asc()),
                  Snapshot.captured_at_ms <= t + NEAR_MS, Snapshot.captured_at_ms > t + NEAR_MS)
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
