"""The reconciler: page ListLiveSnapshotFiles for tracked jobs and queue every file the callbacks missed.

Files become ordinary inbox events (origin ``reconcile``) with the identity a callback naming the same file
would get, so a callback and the reconciler racing on one file give one event or two, and always one
snapshot (snapshot rows are unique). The per-job cursor (jobs.reconciled_until_ms) means "every file
created before this instant is in the inbox"; it moves after each window commits, so a restart resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from sqlalchemy import select, update

from receiver.accounts import DEFAULT
from receiver.adapters.base import FilesPage, IceGateway, JobInfo, JobSummary, SnapshotFile
from receiver.adapters.ice import iter_files
from receiver.db.models import Event, EventOrigin, EventStatus, Job, Snapshot, utcnow
from receiver.exceptions import Transient
from receiver.intake.inbox import record_events
from receiver.intake.parse import EventItem, parse_callback
from receiver.services import Services
from receiver.tiers import parse_retention
from receiver.timeutil import now_ms
from receiver.worker.index import upsert_job

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
# ICE may list a file a little after it is written: stop this far short of now...
SAFETY_LAG_MS = 30_000
# ...and start each run this far before the cursor; already indexed files cost one indexed query.
RESCAN_MS = 5 * 60_000
CHUNK = 500
THROTTLE_TRIES = 8

# Runs the events a window queued; returns their final statuses (None: hand them to the dispatcher).
Executor = Callable[[list[int]], Iterable[str]]


@dataclass
class Tally:
    seen: int = 0
    new: int = 0  # queued by this run (new events, or callback events that had failed, re-queued)
    indexed: int = 0  # already indexed, or already in the inbox as done
    queued: int = 0  # already in the inbox, pending or processing (someone else is on it)
    failed: int = 0  # not indexed: failed while this run processed it, or unusable (another bucket)
    jobs: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name in ("seen", "new", "indexed", "queued", "failed", "jobs"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)

    def summary(self) -> str:
        text = (f"files seen {self.seen}, new {self.new}, already indexed {self.indexed}, failed {self.failed}")
        if self.queued:
            text += f", already queued {self.queued}"
        if self.errors:
            text += f", jobs with errors {len(self.errors)}"
        return text


class PatientIce:
    """ListLiveSnapshotFiles that waits out throttling and 5xx instead of failing the whole sweep."""

    def __init__(self, inner: IceGateway, sleep: Callable[[float], object] = time.sleep, tries: int = THROTTLE_TRIES,
                 base: float = 0.5, cap: float = 30.0) -> None:
        self.inner, self.sleep, self.tries, self.base, self.cap = inner, sleep, tries, base, cap

    def get_job(self, job_id: str) -> JobInfo:
        return self.inner.get_job(job_id)

    def list_jobs(self, page_no: int = 1, page_size: int = 100,
                  status: str | None = None) -> tuple[list[JobSummary], int]:
        return self.inner.list_jobs(page_no=page_no, page_size=page_size, status=status)

    def list_files(self, job_id: str, start_time: str, end_time: str, limit: int = 100,
                   sort_by: str = "asc") -> FilesPage:
        for attempt in range(1, self.tries + 1):
            try:
                return self.inner.list_files(job_id, start_time, end_time, limit=limit, sort_by=sort_by)
            except Transient as e:
                if attempt == self.tries:
                    raise
                delay = min(self.cap, max(self.base * 2 ** (attempt - 1), e.retry_after or 0.0))
                log.info("reconcile %s: %s; waiting %.1fs", job_id, e, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")


def file_item(f: SnapshotFile, account: str = DEFAULT) -> EventItem:
    """The event a callback naming this file would produce (same identity), parsed by the callback parser."""
    body = {"Source": "ListLiveSnapshotFiles", "JobId": f.job_id, "OssObject": f.oss_object,
            "OssBucket": f.bucket, "OssEndpoint": f.endpoint, "CreateTime": f.create_time,
            "CreateTimestamp": f.create_timestamp_ms, "IsOverlay": f.is_overlay}
    items, _ = parse_callback(json.dumps({k: v for k, v in body.items() if v is not None}).encode())
    # The identity a callback through this account's token would give (intake.view._for_account).
    return items[0] if account == DEFAULT else replace(items[0], account=account, identity=hashlib.sha256(
        f"{account}\0{items[0].identity}".encode()).hexdigest())


def _indexed_keys(svc: Services, job: JobInfo, files: list[SnapshotFile]) -> set[str]:
    """Sequence keys with a snapshot row; an overwrite key counts only if indexed at or after that file."""
    out: set[str] = set()
    seq = [f.oss_object for f in files if not f.is_overlay]
    with svc.sessions() as s:
        for i in range(0, len(seq), CHUNK):
            q = select(Snapshot.oss_object).where(Snapshot.job_id == job.job_id, Snapshot.oss_bucket == job.bucket,
                                                  Snapshot.oss_object.in_(seq[i:i + CHUNK]))
            out.update(s.execute(q).scalars())
        for f in files:
            if f.is_overlay:
                newer = select(Snapshot.id).where(
                    Snapshot.job_id == job.job_id, Snapshot.oss_bucket == job.bucket,
                    Snapshot.oss_object == f.oss_object, Snapshot.create_timestamp_ms >= (f.create_timestamp_ms or 0))
                if s.execute(newer.limit(1)).first() is not None:
                    out.add(f.oss_object)
    return out


class Reconciler:
    def __init__(self, svc: Services, *, execute: Executor | None = None,
                 progress: Callable[[int], None] | None = None, sleep: Callable[[float], object] = time.sleep,
                 keep_going: Callable[[], bool] | None = None) -> None:
        self.svc = svc
        self.execute = execute
        self.progress = progress  # called with milliseconds of the span covered since the last call
        self.keep_going = keep_going  # asked before each job: False ends the run (shutdown, lease lost)
        self.sleep = sleep
        self.ice = PatientIce(svc.ice, sleep=sleep)

    def span(self, job: Job | None, since_ms: int | None, until_ms: int | None) -> tuple[int, int]:
        now = now_ms()
        end = until_ms if until_ms is not None else now - SAFETY_LAG_MS
        if since_ms is not None:
            start = since_ms
        elif job is not None and job.reconciled_until_ms is not None:
            start = job.reconciled_until_ms - RESCAN_MS
        else:
            start = now - int(self.svc.settings.reconcile_lookback_days * DAY_MS)
        tiers = parse_retention(self.svc.settings.retention)
        kept_ms = tiers[-1].age_ms if tiers else int(self.svc.settings.retention_days * DAY_MS)
        if since_ms is None and kept_ms > 0:
            # Never re-index what retention would prune again on its next pass.
            start = max(start, now - kept_ms)
        return start // 1000 * 1000, end

    def account_of(self, job_id: str) -> str:
        """The job's account, or the receiver's primary one for a job never seen (`reconcile --job`)."""
        with self.svc.sessions() as s:
            owner = s.execute(select(Job.account).where(Job.job_id == job_id)).scalar_one_or_none()
        return owner or self.svc.account

    def reconcile_job(self, job_id: str, since_ms: int | None = None, until_ms: int | None = None,
                      tally: Tally | None = None, account: str | None = None) -> Tally:
        """One job from its cursor (or since_ms) to now (or until_ms), counted into ``tally`` as it goes.

        JobNotFound and IceError (or Transient after PatientIce gave up) propagate; windows already
        committed stay committed and the cursor says where the next run resumes.
        """
        account = account or self.account_of(job_id)
        asvc = self.svc.for_account(account)
        info = asvc.ice.get_job(job_id)
        with self.svc.sessions.begin() as s:
            job = upsert_job(s, info, account=account)
            start, end = self.span(job, since_ms, until_ms)
        ice = PatientIce(asvc.ice, sleep=self.sleep) if asvc is not self.svc else self.ice
        # An explicit range is a backfill: it must not move the cursor of the periodic sweep.
        keep_cursor = since_ms is None and until_ms is None
        tally = tally if tally is not None else Tally()
        tally.jobs += 1
        newest_overlay: SnapshotFile | None = None
        window = start
        while window <= end:
            window_end = min(window + DAY_MS, end + 1)  # exclusive; every file falls in exactly one window
            files: list[SnapshotFile] = []
            # List one second past the window (ICE's EndTime has second precision and may be exclusive), then
            # keep only this window's files: the next window lists the boundary second again.
            for f in iter_files(ice, job_id, window, window_end + 1000):
                ts = f.create_timestamp_ms
                if ts is not None and not window <= ts < window_end:
                    continue
                if f.is_overlay:
                    # One key, always the latest frame: only the newest listing of it matters.
                    if newest_overlay is None or (f.create_timestamp_ms or 0) >= (newest_overlay.create_timestamp_ms
                                                                                   or 0):
                        newest_overlay = f
                else:
                    files.append(f)
            last = window_end > end
            if last and newest_overlay is not None:
                files.append(newest_overlay)
            self._window(info, files, tally, window_end if keep_cursor else None, account)
            if self.progress is not None:
                self.progress(window_end - window)
            window = window_end
        return tally

    def _window(self, info: JobInfo, files: list[SnapshotFile], tally: Tally, cursor: int | None,
                account: str = DEFAULT) -> None:
        tally.seen += len(files)
        usable = []
        for f in files:
            if f.bucket and f.bucket != info.bucket:
                log.warning("job %s: listed file %r is in bucket %r, the job's is %r; skipped", info.job_id,
                            f.oss_object, f.bucket, info.bucket)
                tally.failed += 1
            else:
                usable.append(f)
        indexed = _indexed_keys(self.svc, info, usable) if usable else set()
        missing = [f for f in usable if f.oss_object not in indexed]
        tally.indexed += len(usable) - len(missing)
        run: list[int] = []
        with self.svc.sessions.begin() as s:
            rec = record_events(s, [file_item(f, account) for f in missing], origin=EventOrigin.RECONCILE)
            run.extend(rec.new_ids)
            old = sorted(set(rec.event_ids) - set(rec.new_ids))
            for i in range(0, len(old), CHUNK):
                rows = s.execute(select(Event.id, Event.status, Event.key_from_ice, Event.last_error)
                                 .where(Event.id.in_(old[i:i + CHUNK]))).all()
                for eid, status, key_from_ice, last_error in rows:
                    if status in (EventStatus.PENDING, EventStatus.PROCESSING):
                        tally.queued += 1
                    elif status == EventStatus.DONE:
                        tally.indexed += 1
                    elif not key_from_ice:
                        # ICE lists the file, so the callback's failure (e.g. a bad hint) is not the last word.
                        s.execute(update(Event).where(Event.id == eid).values(
                            status=EventStatus.PENDING, origin=EventOrigin.RECONCILE, key_from_ice=True, attempts=0,
                            next_attempt_at=utcnow(),
                            lease_until=None, last_error=f"re-queued by reconcile; was {status}: {last_error}"[:2000]))
                        run.append(eid)
                    else:
                        tally.failed += 1  # ours and final already; `receiver replay` retries it
            if cursor is not None:
                s.execute(update(Job).where(Job.job_id == info.job_id).values(reconciled_until_ms=cursor))
        tally.new += len(run)
        if not run:
            return
        if self.execute is None:
            if self.svc.dispatcher is not None:
                self.svc.dispatcher.submit(run)
            return
        statuses = list(self.execute(run))
        tally.failed += sum(1 for st in statuses if st in (EventStatus.FAILED, EventStatus.REJECTED))

    def tracked_jobs(self) -> list[str]:
        with self.svc.sessions() as s:
            return list(s.execute(select(Job.job_id).where(Job.tracked.is_(True)).order_by(Job.job_id)).scalars())

    def run(self, job_ids: list[str] | None = None, since_ms: int | None = None,
            until_ms: int | None = None) -> Tally:
        """Each job in turn; one job's failure (gone, ICE down) is recorded and the others still run."""
        total = Tally()
        for job_id in job_ids if job_ids is not None else self.tracked_jobs():
            if self.keep_going is not None and not self.keep_going():
                break
            try:
                self.reconcile_job(job_id, since_ms, until_ms, total)
            except Exception as e:
                log.warning("reconcile %s: %s", job_id, e)
                total.errors.append(f"{job_id}: {e}")
        return total
