"""The SQL behind stream health: frames of a window (with the frames either side of it), and the current
status of a page of jobs.

Every statement is served by ``ix_snapshots_job_time`` (job_id, captured_at_ms, id). The status of a page
of jobs (``/v1/jobs`` items carry ``health``) comes from one UNION ALL statement of per-job
``ORDER BY captured_at_ms DESC LIMIT k`` probes, so a page costs one round trip and k index rows per job,
however long the histories are. ``job_json`` asks per job; the first ask in a request answers for every
job loaded in that session (the page) and the answers are kept on ``flask.g``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from flask import g, has_app_context
from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session, object_session

from receiver.db.models import Job, Snapshot
from receiver.db.queries import RECENT_MS
from receiver.media.health import Frame, Thresholds, current_status
from receiver.media.signals import to_unsigned64
from receiver.services import current_services
from receiver.tiers import DAY_MS
from receiver.timeutil import now_ms

DEFAULT_INTERVAL_S = 60  # when ICE did not tell us a job's TimeInterval
_COLUMNS = (Snapshot.job_id, Snapshot.captured_at_ms, Snapshot.luma, Snapshot.luma_spread, Snapshot.dhash)


def _frame(row: Any) -> Frame:
    dh = row[4]
    return Frame(row[1], row[2], row[3], to_unsigned64(dh) if dh is not None else None)


def window_frames(s: Session, job_id: str, since: int, until: int) -> list[Frame]:
    rows = s.execute(
        select(*_COLUMNS).where(Snapshot.job_id == job_id, Snapshot.captured_at_ms >= since,
                                Snapshot.captured_at_ms < until)
        .order_by(Snapshot.captured_at_ms, Snapshot.id)
    ).all()
    return [_frame(r) for r in rows]


def previous_ms(s: Session, job_id: str, before: int) -> int | None:
    return s.execute(
        select(Snapshot.captured_at_ms).where(Snapshot.job_id == job_id, Snapshot.captured_at_ms < before)
        .order_by(Snapshot.captured_at_ms.desc(), Snapshot.id.desc()).limit(1)
    ).scalar_one_or_none()


def next_ms(s: Session, job_id: str, at: int) -> int | None:
    """The oldest frame at or after ``at``: a window ending in the past may end inside a silence that later
    frames ended, which is a gap, not ``stale`` (media/health.py ``assess``)."""
    return s.execute(
        select(Snapshot.captured_at_ms).where(Snapshot.job_id == job_id, Snapshot.captured_at_ms >= at)
        .order_by(Snapshot.captured_at_ms, Snapshot.id).limit(1)
    ).scalar_one_or_none()


def first_ms(s: Session, job_id: str) -> int | None:
    return s.execute(select(func.min(Snapshot.captured_at_ms)).where(Snapshot.job_id == job_id)).scalar_one()


def interval_ms(job: Job | None, frames: Sequence[Frame] = ()) -> int:
    """The job's TimeInterval; unknown, the median spacing of the frames at hand, else a minute."""
    if job is not None and job.interval_seconds:
        return int(job.interval_seconds) * 1000
    times = [f.captured_at_ms for f in frames]
    spacings = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return int(statistics.median(spacings)) if spacings else DEFAULT_INTERVAL_S * 1000


def newest_frames(s: Session, job_ids: Sequence[str], k: int) -> dict[str, list[Frame]]:
    """Each job's ``k`` newest frames, newest first, in one statement."""
    out: dict[str, list[Frame]] = {j: [] for j in job_ids}
    if not job_ids:
        return out
    # The recent days first: on PostgreSQL (day partitions) the planner then keeps a few partitions per job
    # instead of every day's. Jobs with fewer than k frames there are asked again without the bound, so the
    # answer is the unbounded one.
    recent = now_ms() // DAY_MS * DAY_MS - RECENT_MS
    for bound, jobs in ((Snapshot.captured_at_ms >= recent, list(job_ids)), (None, None)):
        if jobs is None:
            jobs = [j for j in job_ids if len(out[j]) < k]
            for j in jobs:
                out[j] = []
        if not jobs:
            break
        parts = [
            select(*_COLUMNS).where(Snapshot.job_id == j, *(() if bound is None else (bound,)))
            .order_by(Snapshot.captured_at_ms.desc(), Snapshot.id.desc()).limit(k).subquery().select()
            for j in jobs
        ]
        stmt = parts[0] if len(parts) == 1 else union_all(*parts)
        for row in s.execute(stmt).all():
            out[row[0]].append(_frame(row))
    for frames in out.values():
        frames.sort(key=lambda f: f.captured_at_ms, reverse=True)
    return out


def frames_needed(t: Thresholds) -> int:
    """How many newest frames decide the status at now: enough to see a frozen run end at the newest one and
    any gap within the stale horizon."""
    return max(t.frozen_min_frames, math.ceil(t.stale_factor) + 2) + 1


def statuses(s: Session, jobs: Sequence[Job], t: Thresholds, now: int | None = None,
             newest: dict[str, list[Frame]] | None = None) -> dict[str, str]:
    """Each job's status at ``now`` (the ``health`` of a job item; also what health alerts evaluate).
    ``newest`` is ``newest_frames(…, frames_needed(t))`` when the caller already has it."""
    now = now if now is not None else now_ms()
    if newest is None:
        newest = newest_frames(s, [j.job_id for j in jobs], frames_needed(t))
    return {j.job_id: current_status(newest[j.job_id], interval_ms(j, newest[j.job_id][::-1]), now, t)
            for j in jobs}


def job_status(job: Job) -> str | None:
    """The health status of ``job`` now, batched per request (see the module docstring)."""
    s = object_session(job)
    if s is None or not has_app_context():
        return None

    cache: dict[str, str] = g.setdefault("receiver_health_statuses", {})
    if job.job_id not in cache:
        loaded = [o for o in s.identity_map.values() if isinstance(o, Job) and o.job_id not in cache]
        t = Thresholds.from_settings(current_services().settings)
        cache.update(statuses(s, loaded or [job], t))
    return cache.get(job.job_id)
