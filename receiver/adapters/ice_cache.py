"""A caching IceGateway: GetLiveSnapshotJob answers kept for a short TTL, with single flight."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from receiver.adapters.base import FilesPage, IceGateway, JobInfo, JobSummary
from receiver.config import Settings
from receiver.exceptions import JobNotFound


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    job: JobInfo | None = None
    error: BaseException | None = None


class CachedIceGateway:
    """Caches get_job (negative results too) with single flight; list_files/list_jobs pass through.

    Jobs cannot change their formats or output (there is no UpdateLiveSnapshotJob), so a short TTL is safe and
    spares ICE one call per callback. Concurrent misses for one id share a single upstream call.
    """

    def __init__(
        self,
        inner: IceGateway,
        ttl: float = 60.0,
        negative_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.inner = inner
        self._ttl, self._negative_ttl, self._clock, self._max = ttl, negative_ttl, clock, max_entries
        self._lock = threading.Lock()
        self._entries: dict[
            str, tuple[float, JobInfo | None]
        ] = {}  # job_id -> (expires_at, job or None=gone)
        self._flights: dict[str, _Flight] = {}

    @classmethod
    def from_settings(cls, inner: IceGateway, settings: Settings) -> CachedIceGateway:
        return cls(inner, ttl=settings.job_cache_seconds, negative_ttl=settings.job_negative_cache_seconds)

    def invalidate(self, job_id: str) -> None:
        with self._lock:
            self._entries.pop(job_id, None)

    def get_job(self, job_id: str) -> JobInfo:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None and entry[0] > self._clock():
                if entry[1] is None:
                    raise JobNotFound(f"GetLiveSnapshotJob {job_id!r}: no such job (cached)")
                return entry[1]
            flight = self._flights.get(job_id)
            leader = flight is None
            if flight is None:
                flight = self._flights[job_id] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                dup = _fresh(flight.error)
                if dup is flight.error:
                    raise dup
                raise dup from flight.error
            assert flight.job is not None
            return flight.job
        try:
            flight.job = self.inner.get_job(job_id)
            self._store(job_id, self._ttl, flight.job)
            return flight.job
        except JobNotFound as e:
            flight.error = e
            self._store(job_id, self._negative_ttl, None)
            raise
        except BaseException as e:
            flight.error = e  # not cached: a transient failure must not stick
            raise
        finally:
            with self._lock:
                del self._flights[job_id]
            flight.done.set()

    def _store(self, job_id: str, ttl: float, job: JobInfo | None) -> None:
        if ttl <= 0:
            return
        with self._lock:
            now = self._clock()
            if len(self._entries) >= self._max:
                # Forged job ids could otherwise grow the negative cache without bound.
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                while len(self._entries) >= self._max:
                    del self._entries[next(iter(self._entries))]
            self._entries[job_id] = (now + ttl, job)

    def list_files(
        self, job_id: str, start_time: str, end_time: str, limit: int = 100, sort_by: str = "asc"
    ) -> FilesPage:
        return self.inner.list_files(job_id, start_time, end_time, limit=limit, sort_by=sort_by)

    def list_jobs(
        self, page_no: int = 1, page_size: int = 100, status: str | None = None
    ) -> tuple[list[JobSummary], int]:
        return self.inner.list_jobs(page_no=page_no, page_size=page_size, status=status)


def _fresh(error: BaseException) -> BaseException:
    # Each waiter raises its own copy: one exception object raised in many threads gets its traceback mangled.
    try:
        return copy.copy(error)
    except Exception:
        return error
