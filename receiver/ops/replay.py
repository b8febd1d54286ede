"""`receiver replay`: put final events back in the queue, and run events to the end in this process.

Replay sets the event's origin to ``replay`` (what operators filter on); how strictly its object key is checked
stays with ``key_from_ice``, so a replayed callback is checked as strictly as the first time and a replayed
reconcile event keeps the listing's authority. The replay is noted in last_error until the next attempt ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select, update

from receiver.db.models import FINAL_STATUSES, Event, EventOrigin, EventStatus, utcnow
from receiver.services import Services
from receiver.timeutil import dt_to_iso
from receiver.worker.pipeline import process_event

BATCH = 500
REPLAYABLE = (EventStatus.FAILED, EventStatus.REJECTED)


def replay(svc: Services, statuses: Iterable[str] = (EventStatus.FAILED,), job_id: str | None = None) -> list[int]:
    """Re-queue matching events (status pending, attempts 0, due now); returns their ids."""
    wanted = tuple(statuses)
    if not set(wanted) <= set(REPLAYABLE):
        raise ValueError(f"only {', '.join(REPLAYABLE)} events can be replayed")
    out: list[int] = []
    last = 0
    while True:
        with svc.sessions.begin() as s:
            q = select(Event.id, Event.status, Event.last_error).where(Event.status.in_(wanted), Event.id > last)
            if job_id is not None:
                q = q.where(Event.job_id == job_id)
            rows = s.execute(q.order_by(Event.id).limit(BATCH)).all()
            if not rows:
                return out
            now = utcnow()
            for eid, status, last_error in rows:
                note = f"replayed at {dt_to_iso(now)}; was {status}: {last_error}"[:2000]
                s.execute(update(Event).where(Event.id == eid, Event.status == status).values(
                    status=EventStatus.PENDING, origin=EventOrigin.REPLAY, attempts=0, next_attempt_at=now,
                    lease_until=None, last_error=note, updated_at=now))
                out.append(eid)
            last = rows[-1].id


def _status(svc: Services, event_id: int) -> str:
    with svc.sessions() as s:
        return s.execute(select(Event.status).where(Event.id == event_id)).scalar_one()


def run_to_end(svc: Services, event_id: int, timeout: float = 600.0) -> str:
    """process_event until the event is final, sleeping through scheduled retries; returns the status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = process_event(svc, event_id)
        if outcome.status in FINAL_STATUSES:
            return outcome.status
        if outcome.status == EventStatus.PENDING and outcome.retry_in is not None:
            time.sleep(min(outcome.retry_in, max(0.0, deadline - time.monotonic())))
            continue
        # Skipped: another process holds it, or its retry is not due yet. Watch the row.
        status = _status(svc, event_id)
        if status in FINAL_STATUSES:
            return status
        time.sleep(0.2)
    return _status(svc, event_id)


def run_events(svc: Services, event_ids: list[int], workers: int | None = None) -> list[str]:
    """Run events to the end on a small thread pool (the CLI's synchronous path); statuses in order."""
    if not event_ids:
        return []
    n = max(1, min(workers or svc.settings.workers, len(event_ids)))
    if n == 1:
        return [run_to_end(svc, i) for i in event_ids]
    with ThreadPoolExecutor(n, thread_name_prefix="receiver-run") as pool:
        return list(pool.map(lambda i: run_to_end(svc, i), event_ids))
