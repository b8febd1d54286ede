"""`receiver prune`, RECEIVER_RETENTION and RECEIVER_RETENTION_DAYS: delete old snapshots, their thumbnails, old
events and old cached storyboard sheets; thin by the tiers of RECEIVER_RETENTION (receiver/tiers.py, with the
database side in ops/thinning.py).

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
from receiver.db.partitions import day_name
from receiver.exceptions import ReceiverError
from receiver.media.storyboard import SHEET_PREFIX
from receiver.ops.thinning import Row, count_day, delete_rows, drop_day, droppable_days, thin
from receiver.services import Services
from receiver.tiers import DAY_MS, MAX_AGE_MS, Plan, Tier, plan
from receiver.timeutil import ms_to_iso, now_ms

log = logging.getLogger(__name__)

BATCH = 500
# Failed events stay until replayed: operators need them.
PRUNABLE_STATUSES = (EventStatus.DONE, EventStatus.REJECTED)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``45m``, ``12h``, ``30d``, ``2w`` (a bare number is days) -> seconds, at most MAX_AGE_MS."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text.lower())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"expected a positive duration like 12h, 30d or 2w, got {text!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "d"]
    if seconds * 1000 > MAX_AGE_MS:
        raise ValueError(f"at most {MAX_AGE_MS // DAY_MS} days, got {text!r}")
    return seconds


@dataclass
class PruneResult:
    cutoff_ms: int
    snapshots: int = 0
    thumbnails: int = 0
    events: int = 0
    storyboards: int = 0
    per_job: dict[str, int] = field(default_factory=dict)
    # RECEIVER_RETENTION: snapshots thinned per tier (as written), and the days dropped as partitions with
    # their snapshot counts (PostgreSQL; those snapshots are also in ``snapshots``, not in ``per_job``).
    thinned: dict[str, int] = field(default_factory=dict)
    days: dict[str, int] = field(default_factory=dict)
    # One line per phase that did not finish ("<phase>: <error>"); empty when the prune is complete.
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = ""
        if self.thinned:
            text = "thinned " + ", ".join(f"{n} snapshots in tier {t}" for t, n in self.thinned.items()) + "; "
        text += (f"{self.snapshots} snapshots ({self.thumbnails} thumbnail files), {self.events} done/rejected "
                 f"events and {self.storyboards} cached storyboard sheets older than {ms_to_iso(self.cutoff_ms)}")
        if self.days:
            text += f" ({len(self.days)} whole days as partitions: {', '.join(self.days)})"
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
    """What _prune_snapshots and _prune_events would delete, reported as they report it: whole days by day, the
    rest per job. Adds to ``result`` (the thinning phase may have counted files already)."""
    days = droppable_days(svc, cutoff_ms)
    for day in days:
        result.days[day_name(day)] = count_day(svc, day)
    # The rows a real run deletes one by one: before the cutoff, outside the days it drops whole. Those days
    # are consecutive but for days that never had a partition, so a handful of ranges says which they are.
    outside_days = [~Snapshot.captured_at_ms.between(lo, hi - 1) for lo, hi in _ranges(days)]
    with svc.sessions() as s:
        rows = s.execute(select(Snapshot.job_id, func.count())
                         .where(Snapshot.captured_at_ms < cutoff_ms, *outside_days)
                         .group_by(Snapshot.job_id).order_by(Snapshot.job_id)).all()
        result.per_job = {job: n for job, n in rows}
        result.snapshots += sum(result.per_job.values()) + sum(result.days.values())
        result.thumbnails += s.execute(
            select(func.count()).select_from(Thumbnail).join(Snapshot, Snapshot.id == Thumbnail.snapshot_id)
            .where(Snapshot.captured_at_ms < cutoff_ms)).scalar_one()
        result.events = s.execute(select(func.count()).select_from(Event).where(
            Event.status.in_(PRUNABLE_STATUSES), Event.received_at < cutoff_dt)).scalar_one()
    return result


def _ranges(days: list[int]) -> list[tuple[int, int]]:
    """Sorted UTC days as [lo, hi) ranges of consecutive days."""
    out: list[tuple[int, int]] = []
    for day in sorted(days):
        if out and out[-1][1] == day:
            out[-1] = (out[-1][0], day + DAY_MS)
        else:
            out.append((day, day + DAY_MS))
    return out


def _prune_snapshots(svc: Services, cutoff_ms: int, result: PruneResult, batch: int) -> None:
    """Whole days as partitions first (PostgreSQL), then what is left row by row: per batch the files, then the
    rows (see the module docstring for why this order)."""
    for day in droppable_days(svc, cutoff_ms):
        n, files = drop_day(svc, day, batch)
        result.days[day_name(day)] = n
        result.snapshots += n
        result.thumbnails += files
    while True:
        with svc.sessions() as s:
            rows = [Row(*r) for r in s.execute(
                select(Snapshot.id, Snapshot.job_id, Snapshot.captured_at_ms)
                .where(Snapshot.captured_at_ms < cutoff_ms).order_by(Snapshot.id).limit(batch))]
        if not rows:
            return
        result.thumbnails += delete_rows(svc, rows)
        for r in rows:
            result.per_job[r.job_id] = result.per_job.get(r.job_id, 0) + 1
        result.snapshots += len(rows)


def _thin(svc: Services, p: Plan, result: PruneResult, batch: int, dry_run: bool) -> None:
    for w in p.windows:
        result.thinned.setdefault(w.tier.text, 0)

        def tally(rows: list[Row], files: int, tier: str = w.tier.text) -> None:
            result.thinned[tier] += len(rows)
            result.thumbnails += files

        thin(svc, w, batch, tally, dry_run=dry_run)


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
    return _run(svc, PruneResult(cutoff_ms=cutoff_ms), None, dry_run, batch)


def apply_retention(svc: Services, tiers: tuple[Tier, ...], *, dry_run: bool = False, batch: int = BATCH,
                    now: int | None = None) -> PruneResult:
    """RECEIVER_RETENTION: thin each tier's window, then everything before the last tier's end (a UTC midnight)
    goes as `prune` does."""
    p = plan(tiers, now if now is not None else now_ms())
    return _run(svc, PruneResult(cutoff_ms=p.cutoff_ms), p, dry_run, batch)


def _run(svc: Services, result: PruneResult, p: Plan | None, dry_run: bool, batch: int) -> PruneResult:
    cutoff_ms = result.cutoff_ms
    cutoff_dt = dt.datetime.fromtimestamp(cutoff_ms / 1000, dt.UTC)
    phases: list[tuple[str, Callable[[], object]]] = []
    if p is not None:
        phases.append(("thinning", lambda: _thin(svc, p, result, batch, dry_run)))
    if dry_run:
        phases.append(("counting", lambda: _count(svc, cutoff_ms, cutoff_dt, result)))
    else:
        phases += [("snapshots", lambda: _prune_snapshots(svc, cutoff_ms, result, batch)),
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
