"""`receiver prune` and RECEIVER_RETENTION_DAYS: delete old snapshots, their thumbnails, old events and old
cached storyboard sheets.

Work goes in batches of BATCH rows, one short transaction each, so the callback path (which needs the
SQLite write lock for its inserts) waits at most one batch.

Order within a batch: the thumbnail files are deleted *first*, then the batch's rows in one transaction. The
rows are the only record of which files exist, so they go last: a crash or a store failure in between leaves
rows (all older than the cutoff) whose thumbnails are already gone, and the next prune finds the same rows,
deletes their files again (deleting a missing file or object succeeds) and then the rows. The other order
left files no re-run could ever find once their rows were committed away. Until then those rows answer 404
for their thumbnails, and storyboards draw a blank tile, which is what a pruned snapshot looks like anyway.

Failures are reported, not raised mid-way: each phase (snapshots, events, cached storyboard sheets) that
meets a store error (a ReceiverError: the adapters translate every oss2 failure) stops, records it in
``PruneResult.errors`` and lets the next phase run; what was done is counted as it is done. Anything else
(the database gone) raises PruneIncomplete carrying the counts so far. Either way a re-run finishes the job.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
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
PRUNABLE_STATUSES = (EventStatus.DONE, EventStatus.REJECTED)
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
    # One line per phase that did not finish ("<phase>: <error>"); empty when the prune is complete.
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.snapshots} snapshots ({self.thumbnails} thumbnail files), {self.events} done/rejected "
                f"events and {self.storyboards} cached storyboard sheets older than {ms_to_iso(self.cutoff_ms)}")
        if self.errors:
            text += f"; incomplete ({len(self.errors)} error(s)): run it again to finish"
        return text


class PruneIncomplete(ReceiverError):
    """Prune stopped on something other than a store error; ``result`` holds what it had done by then."""

    code = "PruneIncomplete"

    def __init__(self, message: str, result: PruneResult) -> None:
        super().__init__(message)
        self.result = result


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


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
            Event.status.in_(PRUNABLE_STATUSES), Event.received_at < cutoff_dt)).scalar_one()
    return result


def _prune_snapshots(svc: Services, cutoff_ms: int, result: PruneResult, batch: int) -> None:
    """Per batch: the files, then the rows (see the module docstring for why this order)."""
    while True:
        with svc.sessions() as s:
            rows = s.execute(select(Snapshot.id, Snapshot.job_id).where(Snapshot.captured_at_ms < cutoff_ms)
                             .order_by(Snapshot.id).limit(batch)).all()
            if not rows:
                return
            ids = [r.id for r in rows]
            keys = list(s.execute(select(Thumbnail.storage_key).where(Thumbnail.snapshot_id.in_(ids))).scalars())
            # A file another row also names (an older layout, or keys reused by a re-index) stays.
            shared = set(s.execute(select(Thumbnail.storage_key).where(
                Thumbnail.storage_key.in_(keys), Thumbnail.snapshot_id.not_in(ids))).scalars()) if keys else set()
        gone = [k for k in keys if k not in shared]
        if gone:
            svc.thumbs.delete(gone)  # raises: this batch's rows stay, and the next prune starts from them
            result.thumbnails += len(gone)
        with svc.sessions.begin() as s:
            s.execute(delete(EventSnapshot).where(EventSnapshot.snapshot_id.in_(ids)))
            s.execute(delete(Thumbnail).where(Thumbnail.snapshot_id.in_(ids)))
            s.execute(delete(Snapshot).where(Snapshot.id.in_(ids)))
        for r in rows:
            result.per_job[r.job_id] = result.per_job.get(r.job_id, 0) + 1
        result.snapshots += len(ids)


def _prune_events(svc: Services, cutoff_dt: dt.datetime, result: PruneResult, batch: int) -> None:
    while True:
        with svc.sessions.begin() as s:
            ids = list(s.execute(select(Event.id).where(Event.status.in_(PRUNABLE_STATUSES),
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
    phases: list[tuple[str, Callable[[], object]]]
    if dry_run:
        phases = [("counting", lambda: _count(svc, cutoff_ms, cutoff_dt, result))]
    else:
        phases = [("snapshots", lambda: _prune_snapshots(svc, cutoff_ms, result, batch)),
                  ("events", lambda: _prune_events(svc, cutoff_dt, result, batch))]
    # Sheets last and on their own: a store that cannot list (an OSS policy without ListObjects, an answer
    # oss2 cannot parse) must not stop snapshots and events from being pruned.
    phases.append(("cached storyboard sheets", lambda: _prune_sheets(svc, cutoff_ms, result, dry_run)))
    for name, run in phases:
        try:
            run()
        except (ReceiverError, OSError) as e:
            # A store failure (OSError: the file store's own): this phase stops, the next ones still run.
            result.errors.append(f"{name} not pruned: {_one_line(e)}")
            log.warning("retention: %s not pruned: %s", name, _one_line(e))
        except Exception as e:
            # The database, or a bug: the traceback goes to the log, the command says what was done.
            log.exception("retention: %s not pruned", name)
            result.errors.append(f"{name} not pruned: {type(e).__name__}: {_one_line(e)}")
            raise PruneIncomplete(result.errors[-1], result) from e
    return result


def _prune_sheets(svc: Services, cutoff_ms: int, result: PruneResult, dry_run: bool) -> None:
    """Cached storyboard sheets written before the cutoff: content-addressed and never rewritten, so their
    age is their file's; one for a range still wanted is rendered again."""
    result.storyboards = svc.thumbs.delete_older_than(SHEET_PREFIX, cutoff_ms / 1000, dry_run=dry_run)
