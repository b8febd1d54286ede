"""A caching IceGateway: GetLiveSnapshotJob answers kept for a short TTL, with single flight; and
ListLiveSnapshotFiles pages shared by the events of one batch (``list_files_shared``).

With a ``shared`` tier (Redis, or the database: receiver/adapters/job_cache_redis.py, receiver/db/job_cache.py)
the answers are shared by every process of the deployment: a process that misses its own cache reads the
shared entry, and when that has expired too, one process (the holder of a short per-job lock) asks ICE while
the others wait for its answer. Every process's entry expires when the shared one does, so the deployment
calls GetLiveSnapshotJob about once per job per RECEIVER_JOB_CACHE_SECONDS, however many workers it runs.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from receiver.adapters.base import FilesPage, IceGateway, JobInfo, JobSummary
from receiver.adapters.ratelimit import MAX_WAIT_S
from receiver.config import Settings
from receiver.exceptions import JobNotFound
from receiver.timeutil import now_ms

log = logging.getLogger(__name__)

# How long a shared ListLiveSnapshotFiles page is kept. Freshness is the caller's (``fetched_after_ms``); this
# only bounds memory and how long a burst of events can lean on one answer.
LISTING_TTL_S = 30.0
MAX_LISTINGS = 1000
# Cross-process single flight: how often the processes waiting for the one asking ICE look for its answer. The
# lock's own length comes from the settings (shared_lock_seconds): a holder that is merely slow must keep it.
SHARED_POLL_S = 0.02


def shared_lock_seconds(settings: Settings) -> float:
    """Longer than the holder can legitimately take: the ICE token bucket's longest wait, then the SDK's connect
    and read timeouts, plus a margin. A holder that dies keeps the others waiting this long, not longer."""
    return MAX_WAIT_S + 2 * settings.ice_timeout_ms / 1000 + 5.0


class SharedJobCache(Protocol):
    """The deployment-wide tier of the job cache. Expiry is relative (seconds left), measured by the tier's own
    clock (Redis's, the database server's), so processes whose clocks disagree still agree on it. ``raw`` is
    JobInfo.to_json(), or None for a job ICE does not know (negative entry). ``get`` raises ValueError for an
    entry it cannot read."""

    def get(self, key: str) -> tuple[float, dict[str, Any] | None] | None:
        """(seconds left, raw) of a live entry, or None."""
        ...

    def put(self, key: str, raw: dict[str, Any] | None, ttl: float) -> None: ...
    def try_lock(self, key: str, seconds: float) -> bool:
        """Become the one process asking ICE about ``key`` (False: another is asking)."""
        ...

    def unlock(self, key: str) -> None: ...
    def invalidate(self, key: str) -> None: ...


class _ScopedJobCache:
    """One account's view of the shared tier. Job ids are ICE's and unique, but a negative entry is not: a
    callback on account A's token naming B's new job gets JobNotFound from A's ICE, which must not make B's
    own events find "unknown job" in the shared tier. Every account's keys carry its alias, ``default``
    included: aliases have no ``:`` (accounts.ALIAS_RE), so ``<alias>:<job id>`` names one account's job
    whatever the job id holds (a callback's JobId may contain ``:``)."""

    def __init__(self, inner: SharedJobCache, account: str) -> None:
        assert ":" not in account
        self.inner, self.prefix = inner, f"{account}:"

    def get(self, job_id: str) -> tuple[float, dict[str, Any] | None] | None:
        return self.inner.get(self.prefix + job_id)

    def put(self, job_id: str, raw: dict[str, Any] | None, ttl: float) -> None:
        self.inner.put(self.prefix + job_id, raw, ttl)

    def try_lock(self, job_id: str, seconds: float) -> bool:
        return self.inner.try_lock(self.prefix + job_id, seconds)

    def unlock(self, job_id: str) -> None:
        self.inner.unlock(self.prefix + job_id)

    def invalidate(self, job_id: str) -> None:
        self.inner.invalidate(self.prefix + job_id)


def scoped_job_cache(inner: SharedJobCache, account: str) -> SharedJobCache:
    """``inner`` for one account's gateway."""
    return _ScopedJobCache(inner, account)


class _Unreadable(Exception):
    """A shared entry that could not be read (and has been dropped)."""


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    job: JobInfo | None = None
    error: BaseException | None = None


_PageKey = tuple[str, str, str, int, str]  # job_id, start_time, end_time, limit, sort_by


@dataclass
class _PageFlight:
    sent_ms: int  # wall clock when the request left: the answer holds every file ICE listed by then
    done: threading.Event = field(default_factory=threading.Event)
    page: FilesPage | None = None
    error: BaseException | None = None


class CachedIceGateway:
    """Caches get_job (negative results too) with single flight; list_files/list_jobs pass through, and
    list_files_shared shares listing pages between the callers that may share them.

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
        listing_ttl: float = LISTING_TTL_S,
        wall_ms: Callable[[], int] = now_ms,
        shared: SharedJobCache | None = None,
        lock_seconds: float = MAX_WAIT_S + 15.0,
    ) -> None:
        self.inner = inner
        self.shared, self._lock_seconds = shared, lock_seconds
        self._ttl, self._negative_ttl, self._clock, self._max = ttl, negative_ttl, clock, max_entries
        self._lock = threading.Lock()
        self._entries: dict[
            str, tuple[float, JobInfo | None]
        ] = {}  # job_id -> (expires_at, job or None=gone)
        self._flights: dict[str, _Flight] = {}
        self._listing_ttl, self._wall_ms = listing_ttl, wall_ms
        self._pages: dict[_PageKey, tuple[float, int, FilesPage]] = {}  # -> (expires_at, sent_ms, page)
        self._page_flights: dict[_PageKey, _PageFlight] = {}

    @classmethod
    def from_settings(cls, inner: IceGateway, settings: Settings,
                      shared: SharedJobCache | None = None) -> CachedIceGateway:
        return cls(inner, ttl=settings.job_cache_seconds, negative_ttl=settings.job_negative_cache_seconds,
                   shared=shared, lock_seconds=shared_lock_seconds(settings))

    def invalidate(self, job_id: str) -> None:
        with self._lock:
            self._entries.pop(job_id, None)
        if self.shared is not None:
            try:
                self.shared.invalidate(job_id)
            except Exception:
                log.warning("could not drop job %s from the shared job cache", job_id, exc_info=True)

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
            _follow(flight)
            assert flight.job is not None
            return flight.job
        try:
            flight.job = self._lookup(job_id)
            return flight.job
        except JobNotFound as e:
            flight.error = e
            raise
        except BaseException as e:
            flight.error = e  # not cached: a transient failure must not stick
            raise
        finally:
            with self._lock:
                del self._flights[job_id]
            flight.done.set()

    def _lookup(self, job_id: str) -> JobInfo:
        """A local miss: the shared tier's entry, or ICE's answer (asked by one process of the deployment)."""
        shared = self.shared
        if shared is None or self._ttl <= 0:  # RECEIVER_JOB_CACHE_SECONDS=0: every event asks ICE itself
            return self._ask(job_id)
        # A safety net only: the holder's lock expires before this, and a waiter then takes it in its turn.
        give_up = time.monotonic() + self._lock_seconds + 5.0
        unreadable = 0
        while True:
            try:
                hit = self._read_shared(shared, job_id)
                if hit is not None:
                    return self._from_shared(job_id, hit)
                leader = shared.try_lock(job_id, self._lock_seconds)
            except JobNotFound:
                raise
            except _Unreadable:
                unreadable += 1
                if unreadable > 1:  # dropped once and unreadable again: something else writes there
                    return self._ask(job_id)
                continue
            except Exception:
                # The shared tier is down (Redis restarting, the database briefly away): ask ICE directly.
                log.warning("shared job cache unavailable; asking ICE for %s directly", job_id, exc_info=True)
                return self._ask(job_id)
            if leader:
                try:
                    # Another process may have answered between our look and our lock (Redis hands a released
                    # lock to the next asker): look once more before asking ICE.
                    try:
                        hit = self._read_shared(shared, job_id)
                    except Exception:
                        hit = None
                    if hit is not None:
                        return self._from_shared(job_id, hit)
                    return self._ask(job_id, shared)
                finally:
                    try:
                        shared.unlock(job_id)
                    except Exception:
                        log.warning("could not release the job-cache lock of %s (it expires)", job_id)
            if time.monotonic() >= give_up:
                return self._ask(job_id, shared)
            time.sleep(SHARED_POLL_S)

    def _read_shared(self, shared: SharedJobCache, job_id: str) -> tuple[float, JobInfo | None] | None:
        """The shared entry, decoded: (seconds left, job or None for unknown). An entry that cannot be read (not
        JSON, not a job) is dropped and raises _Unreadable: it counts as a miss, and the
        next answer from ICE replaces it (left in place, every process would ask ICE until it expired)."""
        try:
            hit = shared.get(job_id)
            if hit is None:
                return None
            left, raw = hit
            job = None if raw is None else JobInfo.from_json(raw)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("unreadable shared job-cache entry for %s (%s); dropping it", job_id, e)
            try:
                shared.invalidate(job_id)
            except Exception:
                log.warning("could not drop the job-cache entry of %s", job_id, exc_info=True)
            raise _Unreadable from e
        return left, job

    def _from_shared(self, job_id: str, hit: tuple[float, JobInfo | None]) -> JobInfo:
        left, job = hit
        # Expire with the shared entry, so every process comes back to it (and to ICE) at the same moment.
        self._store(job_id, min(left, self._ttl if job is not None else self._negative_ttl), job)
        if job is None:
            raise JobNotFound(f"GetLiveSnapshotJob {job_id!r}: no such job (cached)")
        return job

    def _ask(self, job_id: str, shared: SharedJobCache | None = None) -> JobInfo:
        try:
            job = self.inner.get_job(job_id)
        except JobNotFound:
            self._store(job_id, self._negative_ttl, None)
            self._publish(shared, job_id, None, self._negative_ttl)
            raise
        self._store(job_id, self._ttl, job)
        self._publish(shared, job_id, job.to_json(), self._ttl)
        return job

    def _publish(self, shared: SharedJobCache | None, job_id: str, raw: dict[str, Any] | None, ttl: float) -> None:
        if shared is None or ttl <= 0:
            return
        try:
            shared.put(job_id, raw, ttl)
        except Exception:
            log.warning("could not share job %s in the job cache", job_id, exc_info=True)

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

    def list_files_shared(
        self, job_id: str, start_time: str, end_time: str, limit: int = 100, sort_by: str = "asc", *,
        fetched_after_ms: int,
    ) -> FilesPage:
        """``list_files``, answered by a request sent at or after ``fetched_after_ms`` (wall clock, epoch ms).

        The events of one callback batch (the worker's bare-JobId events, worker/resolve.py) ask the same
        question; they pass the time their callback arrived, so one answer sent after it serves them all: it
        holds every file ICE had listed when they were called back. Concurrent identical requests share one
        upstream call (single flight), and a page fetched since stays reusable for ``listing_ttl`` seconds.
        Errors are not kept: the next caller asks again.
        """
        key: _PageKey = (job_id, start_time, end_time, limit, sort_by)
        with self._lock:
            entry = self._pages.get(key)
            if entry is not None and entry[0] > self._clock() and entry[1] >= fetched_after_ms:
                return entry[2]
            flight = self._page_flights.get(key)
            leader = flight is None or flight.sent_ms < fetched_after_ms  # a flight sent too early will not do
            if leader:
                flight = self._page_flights[key] = _PageFlight(sent_ms=self._wall_ms())
        assert flight is not None
        if not leader:
            _follow(flight)
            assert flight.page is not None
            return flight.page
        try:
            flight.page = self.inner.list_files(job_id, start_time, end_time, limit=limit, sort_by=sort_by)
            self._store_page(key, flight.sent_ms, flight.page)
            return flight.page
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                if self._page_flights.get(key) is flight:
                    del self._page_flights[key]
            flight.done.set()

    def _store_page(self, key: _PageKey, sent_ms: int, page: FilesPage) -> None:
        if self._listing_ttl <= 0:
            return
        with self._lock:
            now = self._clock()
            if len(self._pages) >= MAX_LISTINGS:
                self._pages = {k: v for k, v in self._pages.items() if v[0] > now}
                while len(self._pages) >= MAX_LISTINGS:
                    del self._pages[next(iter(self._pages))]
            old = self._pages.get(key)
            if old is None or old[1] <= sent_ms:  # never replace a newer answer with an older one
                self._pages[key] = (now + self._listing_ttl, sent_ms, page)

    def list_jobs(
        self, page_no: int = 1, page_size: int = 100, status: str | None = None
    ) -> tuple[list[JobSummary], int]:
        return self.inner.list_jobs(page_no=page_no, page_size=page_size, status=status)


def _follow(flight: _Flight | _PageFlight) -> None:
    """A follower of a single flight: wait for the leader, and raise (a copy of) its error if it failed."""
    flight.done.wait()
    if flight.error is not None:
        dup = _fresh(flight.error)
        if dup is flight.error:
            raise dup
        raise dup from flight.error


def _fresh(error: BaseException) -> BaseException:
    # Each waiter raises its own copy: one exception object raised in many threads gets its traceback mangled.
    try:
        return copy.copy(error)
    except Exception:
        return error
