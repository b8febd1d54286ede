"""`receiver prune` and RECEIVER_RETENTION_DAYS: delete old snapshots, their thumbnails, old events and old
cached storyboard sheets.

Work goes in batches of BATCH rows, one short transaction each, so the callback path (which needs the
SQLite write lock for its inserts) waits at most one batch. Rows are deleted and committed *before* their
thumbnail files: a crash in between leaves orphan files (invisible, and overwritten if the same snapshot is
ever indexed again, because storage keys are deterministic) rather than rows pointing at missing files.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select

from receiver.db.models import Event, EventSnapshot, EventStatus, Snapshot, Thumbnail
from receiver.exceptions import ReceiverError
from receiver.media.storyboard import SHEET_PREFIX
from receiver.services import Services
from receiver.timeutil import ms_to_iso, now_ms

log = logging.getLogger(__name__)

BATCH = 500
# Failed events stay until replayed: operators need them.
FINAL_EVENT_STATUSES = (EventStatus.DONE, EventStatus.REJECTED)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``45m``, ``12h``, ``30d``, ``2w`` (a bare number is days) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"expected a positive duration like 12h, 30d or 2w, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "d"]


@dataclass
class PruneResult:
    cutoff_ms: int
    snapshots: int = 0
    thumbnails: int = 0
    events: int = 0
    storyboards: int = 0
    per_job: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.snapshots} snapshots ({self.thumbnails} thumbnail files), {self.events} done/rejected "
                f"events and {self.storyboards} cached storyboard sheets older than {ms_to_iso(self.cutoff_ms)}")


def _count(svc: Services, cutoff_ms: int, cutoff_dt: dt.datetime, result: PruneResult) -> PruneResult:
    with svc.sessions() as s:
        rows = s.execute(select(Snapshot.job_id, func.count()).where(Snapshot.captured_at_ms < cutoff_ms)
                         .group_by(Snapshot.job_id).order_by(Snapshot.job_id)).all()
        result.per_job = {job: n for job, n in rows}
        result.snapshots = sum(result.per_job.values())
        result.thumbnails = s.execute(
            select(func.count()).select_from(Thumbnail).join(Snapshot, Snapshot.id == Thumbnail.snapshot_id)
            .where(Snapshot.captured_at_ms < cutoff_ms)).scalar_one()
        result.events = s.execute(select(func.count()).select_from(Event).where(
            Event.status.in_(FINAL_EVENT_STATUSES), Event.received_at < cutoff_dt)).scalar_one()
    return result


def _prune_snapshots(svc: Services, cutoff_ms: int, result: PruneResult, batch: int) -> None:
    while True:
        with svc.sessions.begin() as s:
            rows = s.execute(select(Snapshot.id, Snapshot.job_id).where(Snapshot.captured_at_ms < cutoff_ms)
                             .order_by(Snapshot.id).limit(batch)).all()
            if not rows:
                return
            ids = [r.id for r in rows]
            keys = list(s.execute(select(Thumbnail.storage_key).where(Thumbnail.snapshot_id.in_(ids))).scalars())
            s.execute(delete(EventSnapshot).where(EventSnapshot.snapshot_id.in_(ids)))
            s.execute(delete(Thumbnail).where(Thumbnail.snapshot_id.in_(ids)))
            s.execute(delete(Snapshot).where(Snapshot.id.in_(ids)))
        for r in rows:
            result.per_job[r.job_id] = result.per_job.get(r.job_id, 0) + 1
        result.snapshots += len(ids)
        if keys:
            with svc.sessions() as s:
                # A snapshot re-indexed since (same identity, same deterministic keys) owns these files again.
                live = set(s.execute(select(Thumbnail.storage_key).where(Thumbnail.storage_key.in_(keys))).scalars())
            gone = [k for k in keys if k not in live]
            svc.thumbs.delete(gone)
            result.thumbnails += len(gone)


def _prune_events(svc: Services, cutoff_dt: dt.datetime, result: PruneResult, batch: int) -> None:
    while True:
        with svc.sessions.begin() as s:
            ids = list(s.execute(select(Event.id).where(Event.status.in_(FINAL_EVENT_STATUSES),
                                                        Event.received_at < cutoff_dt)
                                 .order_by(Event.id).limit(batch)).scalars())
            if not ids:
                return
            s.execute(delete(EventSnapshot).where(EventSnapshot.event_id.in_(ids)))
            s.execute(delete(Event).where(Event.id.in_(ids)))
        result.events += len(ids)


def prune(svc: Services, older_than_seconds: float, *, dry_run: bool = False, batch: int = BATCH,
          now: int | None = None) -> PruneResult:
    """Snapshots captured before now - older_than (by captured_at), and final events received before it."""
    cutoff_ms = (now if now is not None else now_ms()) - int(older_than_seconds * 1000)
    cutoff_dt = dt.datetime.fromtimestamp(cutoff_ms / 1000, dt.UTC)
    result = PruneResult(cutoff_ms=cutoff_ms)
    if dry_run:
        _count(svc, cutoff_ms, cutoff_dt, result)
    else:
        _prune_snapshots(svc, cutoff_ms, result, batch)
        _prune_events(svc, cutoff_dt, result, batch)
    _prune_sheets(svc, cutoff_ms, result, dry_run)
    return result


def _prune_sheets(svc: Services, cutoff_ms: int, result: PruneResult, dry_run: bool) -> None:
    """Cached storyboard sheets written before the cutoff: content-addressed and never rewritten, so their
    age is their file's; one for a range still wanted is rendered again. Last and on its own: a store that
    cannot list (an OSS policy without ListObjects) must not stop snapshots and events from being pruned."""
    try:
        result.storyboards = svc.thumbs.delete_older_than(SHEET_PREFIX, cutoff_ms / 1000, dry_run=dry_run)
    except (ReceiverError, OSError) as e:
        log.warning("retention: cached storyboard sheets not pruned: %s", e)
