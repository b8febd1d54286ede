"""The database side of retention: thinning windows (RECEIVER_RETENTION), deleting a batch of snapshots with
their thumbnails and links, and whole days as partitions on PostgreSQL.

Thinning walks each job's snapshots in a window on ``ix_snapshots_job_time`` (job, captured_at_ms, id), in
keyset batches: a row goes when an earlier row of the same job lies in its clock bucket (``captured_at_ms -
captured_at_ms % resolution``), so the first of each bucket stays and nothing else does. The same statement
runs on SQLite and PostgreSQL (``%`` on integers is the same remainder on both for times after 1970).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Select, and_, delete, exists, func, or_, select, text
from sqlalchemy.orm import aliased

from receiver.db import partitions
from receiver.db.models import EventSnapshot, Job, Snapshot, Thumbnail
from receiver.media.keys import day_prefixes
from receiver.services import Services
from receiver.tiers import DAY_MS, Window


@dataclass(frozen=True)
class Row:
    id: int
    job_id: str
    captured_at_ms: int


def files_of(svc: Services, rows: Sequence[Row]) -> list[str]:
    """The thumbnail files that deleting ``rows`` deletes: theirs, less any another row also names (keys reused by
    a re-index)."""
    if not rows:
        return []
    ids = [r.id for r in rows]
    # The capture times let PostgreSQL look in those days' partitions only.
    ats = sorted({r.captured_at_ms for r in rows})
    with svc.sessions() as s:
        keys = list(s.execute(select(Thumbnail.storage_key).where(
            Thumbnail.snapshot_id.in_(ids), Thumbnail.captured_at_ms.in_(ats))).scalars())
        shared = set(s.execute(select(Thumbnail.storage_key).where(
            Thumbnail.storage_key.in_(keys), Thumbnail.snapshot_id.not_in(ids))).scalars()) if keys else set()
    return [k for k in keys if k not in shared]


def delete_rows(svc: Services, rows: Sequence[Row]) -> int:
    """Files first, then the rows in one transaction (see ops/retention.py for why); returns files deleted."""
    if not rows:
        return 0
    ids = [r.id for r in rows]
    ats = sorted({r.captured_at_ms for r in rows})
    gone = files_of(svc, rows)
    if gone:
        svc.thumbs.delete(gone)  # raises: the rows stay, and the next prune starts from them
    with svc.sessions.begin() as s:
        s.execute(delete(EventSnapshot).where(EventSnapshot.snapshot_id.in_(ids),
                                              EventSnapshot.captured_at_ms.in_(ats)))
        s.execute(delete(Thumbnail).where(Thumbnail.snapshot_id.in_(ids), Thumbnail.captured_at_ms.in_(ats)))
        s.execute(delete(Snapshot).where(Snapshot.id.in_(ids), Snapshot.captured_at_ms.in_(ats)))
    return len(gone)


def _surplus(job_id: str, w: Window, after: tuple[int, int] | None) -> Select[int, str, int]:
    s, f = aliased(Snapshot), aliased(Snapshot)
    bucket = s.captured_at_ms - s.captured_at_ms % w.resolution_ms
    earlier = exists().where(
        f.job_id == s.job_id, f.captured_at_ms >= bucket, f.captured_at_ms <= s.captured_at_ms,
        or_(f.captured_at_ms < s.captured_at_ms, and_(f.captured_at_ms == s.captured_at_ms, f.id < s.id)))
    q = select(s.id, s.job_id, s.captured_at_ms).where(
        s.job_id == job_id, s.captured_at_ms >= w.lo_ms, s.captured_at_ms < w.hi_ms, earlier)
    if after is not None:
        q = q.where(or_(s.captured_at_ms > after[0], and_(s.captured_at_ms == after[0], s.id > after[1])))
    return q.order_by(s.captured_at_ms, s.id)


def job_ids(svc: Services) -> list[str]:
    with svc.sessions() as s:
        return list(s.execute(select(Job.job_id).order_by(Job.job_id)).scalars())


def thin(svc: Services, w: Window, batch: int, on_batch: Callable[[list[Row], int], None],
         dry_run: bool = False) -> None:
    """Every job's surplus rows in ``w``: counted (dry run) or deleted, batch by batch."""
    for job in job_ids(svc):
        after: tuple[int, int] | None = None
        while True:
            with svc.sessions() as s:
                rows = [Row(*r) for r in s.execute(_surplus(job, w, after).limit(batch))]
            if not rows:
                break
            files = len(files_of(svc, rows)) if dry_run else delete_rows(svc, rows)
            on_batch(rows, files)
            after = (rows[-1].captured_at_ms, rows[-1].id)


def droppable_days(svc: Services, cutoff_ms: int) -> list[int]:
    """Day partitions wholly before ``cutoff_ms`` (PostgreSQL; [] elsewhere)."""
    with svc.engine.connect() as conn:
        if not partitions.is_partitioned(conn):
            return []
        return [d for d in partitions.day_partitions(conn) if d + DAY_MS <= cutoff_ms]


def count_day(svc: Services, day_ms: int) -> int:
    with svc.sessions() as s:
        return int(s.execute(select(func.count()).select_from(Snapshot).where(
            Snapshot.captured_at_ms >= day_ms, Snapshot.captured_at_ms < day_ms + DAY_MS)).scalar_one())


def drop_day(svc: Services, day_ms: int, batch: int) -> tuple[int, int]:
    """One day as partitions: its thumbnail files (by the day's 256 prefixes, or by the rows' keys for a day
    the migration copied under older key layouts), then DETACH + DROP. Returns (snapshots, files)."""
    rows = count_day(svc, day_ms)
    files = 0
    with svc.engine.connect() as conn:
        legacy = partitions.has_legacy_keys(conn, day_ms)
    if legacy:
        # One streamed pass over the day's rows (a server-side cursor): the partition has no index on the key,
        # and paging by key would scan it once per page. An interrupted pass starts over (deleting a missing
        # file or object succeeds).
        name = partitions.partition_name("thumbnails", day_ms)
        with svc.engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(text(f"SELECT storage_key FROM {name}"))
            for chunk in result.partitions(max(batch, 1000)):
                keys = sorted({r[0] for r in chunk})
                svc.thumbs.delete(keys)
                files += len(keys)
    # New-layout files of that day, also on a legacy day (snapshots indexed after the upgrade).
    for prefix in day_prefixes(day_ms):
        files += svc.thumbs.delete_prefix(prefix)
    with svc.engine.begin() as conn:
        partitions.drop_day(conn, day_ms)
    return rows, files
