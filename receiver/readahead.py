"""Read-ahead for the in-process worker pool: fetch the next queued events' objects while frames are thumbnailed.

A worker that fetches, then thumbnails, waits on OSS once per frame: ~1.5 ms against the local fake, tens of
milliseconds against real OSS, where a 300 KB GET costs more wall time than the thumbnails do. The thread
dispatcher calls ``start(event_id)`` for events queued behind the running ones; a helper thread fetches the
object, and ``ingest.prepare`` asks ``take()`` before it fetches. Pillow releases the GIL while it decodes and
resizes, so the network wait (and the GET's own Python) overlaps the current frame's kernel.

Only what cannot go stale is fetched ahead: a sequence object (written once) named by an event on its first
attempt, for a job the ICE gateway verifies (cached), through the same endpoint allow-list. Nothing here
decides an outcome: a failed or missing read-ahead is a miss, and the worker's own GET runs and reports as
it always did. Held objects are bounded in count and age; an object whose event was taken by another
process is dropped unread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from sqlalchemy import select

from .ingest import resolve_targets
from .models import Event

if TYPE_CHECKING:
    from .oss import FetchedObject
    from .services import Services

log = logging.getLogger(__name__)

MAX_AGE_S = 60.0


class ReadAhead:
    def __init__(self, svc: Services, depth: int) -> None:
        self._svc = svc
        self.depth = max(1, depth)  # events read ahead of the running ones
        # Held or in flight at most: the events queued next, plus those whose worker has started but not yet
        # taken its object (it claims and resolves first).
        self.capacity = 2 * self.depth
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # (endpoint, bucket, key) -> (monotonic start, the GET); oldest first
        self._held: OrderedDict[tuple[str, str, str], tuple[float, Future[FetchedObject]]] = OrderedDict()
        # Objects a worker asked for and did not find (recent ones): a read-ahead that resolves one of these
        # after the worker passed by would only fetch it a second time.
        self._missed: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def start(self, event_id: int) -> None:
        """Fetch ``event_id``'s object in the background, if it is one that may be fetched ahead."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.depth, thread_name_prefix="receiver-readahead")
            pool = self._pool
        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            pool.submit(self._fetch, event_id)

    def take(self, endpoint: str, bucket: str, key: str) -> FetchedObject | None:
        """The object fetched ahead (waiting for a GET still in flight), or None: then fetch it yourself."""
        with self._lock:
            entry = self._held.pop((endpoint, bucket, key), None)
            if entry is None:
                self._missed[(endpoint, bucket, key)] = None
                if len(self._missed) > 8 * self.capacity:
                    self._missed.popitem(last=False)
                return None
        try:
            return entry[1].result()
        except Exception as e:
            # The caller's own GET will meet (and report) the same error, or succeed this time.
            log.debug("read-ahead of %s/%s failed: %s", bucket, key, e)
            return None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            self._held.clear()
            self._missed.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch(self, event_id: int) -> None:
        svc = self._svc
        try:
            target = self._target(event_id)
        except Exception as e:  # a rejected or unreadable event: the worker will say why
            log.debug("event %s: no read-ahead: %s", event_id, e)
            return
        if target is None:
            return
        endpoint, bucket, key = target
        future: Future[FetchedObject] = Future()
        now = time.monotonic()
        with self._lock:
            if target in self._held or target in self._missed:
                return
            # Oldest out first: an object whose event another process took is never taken.
            while self._held and (len(self._held) >= self.capacity
                                  or next(iter(self._held.values()))[0] < now - MAX_AGE_S):
                self._held.popitem(last=False)
            self._held[target] = (now, future)
        try:
            future.set_result(svc.source.get(endpoint, bucket, key, svc.settings.max_image_bytes))
        except BaseException as e:
            future.set_exception(e)

    def _target(self, event_id: int) -> tuple[str, str, str] | None:
        from .pipeline import CLAIMED_COLUMNS, Claimed

        svc = self._svc
        with svc.read_engine.connect() as conn:
            row = conn.execute(select(*CLAIMED_COLUMNS, Event.status).where(Event.id == event_id)).one_or_none()
        if row is None or row.status != "pending" or row.attempts != 0 or not row.oss_object:
            return None
        fields = dict(row._mapping)
        del fields["status"]
        ev = Claimed(**{**fields, "attempts": 1})  # as the worker will see it once it claims the event
        job = svc.ice.get_job(ev.job_id)
        # Same checks as the worker's: the job's output, the endpoint allow-list, the key's format.
        [t] = resolve_targets(svc, job, ev)
        if t.kind != "sequence" or not t.first_sight or not (job.endpoint and job.bucket):
            return None
        return job.endpoint, job.bucket, t.key
