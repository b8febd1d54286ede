"""Keeping claims alive while work runs, and taking back a dead process's claims on SQLite.

A claim (``processing`` + ``lease_until``) is short (RECEIVER_LEASE_SECONDS, 20 s by default) so that a dead
worker's event is noticed quickly. While a worker lives, one heartbeat thread per process (and engine) renews
the leases of every claim that process is working on, in one UPDATE every third of a lease, guarded by the
claimed attempt number: a claim that was lost (expired and taken by another worker, re-queued by the Celery
sweeper or by `reconcile`) is never renewed. So a slow download keeps its event however long it takes, and a
worker that dies (SIGKILL, OOM, a lost host) stops renewing: its events are due again at most one lease
after its last renewal. Threads, spawned pool children and Celery prefork children each run their own
heartbeat (started lazily, per process id, so a fork starts a fresh one).

On a SQLite file every process that claims events holds a shared ``flock`` on ``<database>-workers.lock``
for its lifetime (the kernel drops it when the process dies, however it dies). A dispatcher starting up
(``serve``, ``receiver worker``) that gets that lock exclusively knows no other live process can hold a claim,
so every ``processing`` row is an orphan of a previous run: it expires their leases at once and its first
sweep runs them, instead of waiting out the lease. When a `receiver worker` (or another `serve`) shares the
file, the exclusive lock is refused and the leases are left to expire as usual. No schema change: the lock
says whether a holder lives, the lease says when its claim ends.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import IO

from sqlalchemy import Engine, bindparam, tuple_, update
from sqlalchemy.engine import make_url

from receiver.db.models import Event, EventStatus, utcnow
from receiver.services import Services

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no start-up reclaim, leases expire as usual
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Renewals per lease: a worker stalled (GC, a database lock wait) for up to two thirds of a lease keeps its claims.
BEATS_PER_LEASE = 3


def renew(engine: Engine, claims: dict[int, int], lease_seconds: float) -> int:
    """Extend the leases of ``claims`` (event id -> claimed attempt) still held; returns how many were."""
    if not claims:
        return 0
    stmt = (
        update(Event)
        .where(Event.status == EventStatus.PROCESSING,
               tuple_(Event.id, Event.attempts).in_(bindparam("claims", expanding=True)))
        .values(lease_until=bindparam("lease"))
    )
    lease = utcnow() + dt.timedelta(seconds=lease_seconds)
    with engine.begin() as conn:
        return int(conn.execute(stmt, {"claims": list(claims.items()), "lease": lease}).rowcount)


class Heartbeat:
    """Renews the claims this process is working on while it works on them (see the module's docstring)."""

    def __init__(self, engine: Engine, lease_seconds: float) -> None:
        # Weak: the registry below is keyed by the engine, and a value holding its key would keep every closed
        # Services' engine (and this) alive for the life of the process.
        self._engine = weakref.ref(engine)
        self.lease_seconds = lease_seconds
        self.interval = max(0.05, lease_seconds / BEATS_PER_LEASE)
        self._claims: dict[int, int] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.renewals = 0

    @contextmanager
    def holding(self, event_id: int, attempts: int) -> Iterator[None]:
        with self._cond:
            self._claims[event_id] = attempts
            self._cond.notify_all()  # a lingering thread takes it on
            if self._thread is None or not self._thread.is_alive():
                # Runs only while there are claims: an idle process (or a Services closed in tests) has none.
                self._thread = threading.Thread(target=self._loop, name="receiver-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                if self._claims.get(event_id) == attempts:
                    del self._claims[event_id]
                self._cond.notify_all()

    def _loop(self) -> None:
        next_beat = time.monotonic() + self.interval
        while True:
            with self._cond:
                while self._claims and time.monotonic() < next_beat:
                    self._cond.wait(timeout=max(0.0, next_beat - time.monotonic()))
                if not self._claims:
                    # Linger one beat: a process that runs one event at a time (a pool child, a Celery prefork
                    # child) would otherwise start a thread per event.
                    self._cond.wait_for(lambda: bool(self._claims), timeout=self.interval)
                    if not self._claims:
                        self._thread = None
                        return
                    next_beat = time.monotonic() + self.interval
                    continue
                claims = dict(self._claims)
            next_beat = time.monotonic() + self.interval
            engine = self._engine()
            if engine is None:
                return
            try:
                held = renew(engine, claims, self.lease_seconds)
                self.renewals += 1
            except Exception:
                # The database is briefly away: try again at the next beat (the lease covers two missed ones).
                log.warning("could not renew %d claim(s); will try again", len(claims), exc_info=True)
                continue
            if held < len(claims):
                # Finished between the copy and the UPDATE, or taken over: the finish checks which.
                log.debug("heartbeat: %d of %d claim(s) no longer held", len(claims) - held, len(claims))


_BEATS: weakref.WeakKeyDictionary[Engine, Heartbeat] = weakref.WeakKeyDictionary()
_BEATS_PID = os.getpid()
_BEATS_LOCK = threading.Lock()


def heartbeat(svc: Services) -> Heartbeat:
    """This process's heartbeat for ``svc``'s database (a forked child starts its own)."""
    global _BEATS_PID
    with _BEATS_LOCK:
        if os.getpid() != _BEATS_PID:  # threads do not survive a fork: neither does the parent's heartbeat
            _BEATS.clear()
            _BEATS_PID = os.getpid()
        beat = _BEATS.get(svc.engine)
        if beat is None or beat.lease_seconds != svc.settings.lease_seconds:
            beat = _BEATS[svc.engine] = Heartbeat(svc.engine, svc.settings.lease_seconds)
        return beat


# --- SQLite: who may hold claims --------------------------------------------------------------------------

_LOCKS: dict[str, IO[bytes]] = {}  # lock file path -> this process's open file holding the shared lock
# The Services (by id) of this process using each lock: the file is closed (the lock dropped) when the last
# of them closes, so a process that builds many apps (tests, the CLI) does not keep one file per database.
_HOLDERS: dict[str, set[int]] = {}
_LOCKS_PID = os.getpid()
_LOCKS_LOCK = threading.Lock()


def _lock_path(svc: Services) -> str | None:
    return _lock_path_for(svc.settings.database_url) if svc.settings.is_sqlite else None


@cache
def _lock_path_for(database_url: str) -> str | None:
    if fcntl is None:
        return None
    database = make_url(database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    # realpath: two spellings of one file (a symlinked release folder) must meet on one lock.
    return f"{os.path.realpath(database)}-workers.lock"


def _own_locks() -> dict[str, IO[bytes]]:
    global _LOCKS_PID
    if os.getpid() != _LOCKS_PID:
        # A forked child shares the parent's open file (and so its lock); it takes its own on first use.
        _LOCKS.clear()
        _HOLDERS.clear()
        _LOCKS_PID = os.getpid()
    return _LOCKS


def mark_claimer(svc: Services) -> None:
    """Before this process's first claim on a SQLite file: hold the shared lock for the process's lifetime."""
    path = _lock_path(svc)
    if path is None:
        return
    with _LOCKS_LOCK:
        locks = _own_locks()
        _HOLDERS.setdefault(path, set()).add(id(svc))
        if path in locks:
            return
        f = open(path, "ab")  # noqa: SIM115 - held open until release_claimer or the process's end
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # waits only while a starting dispatcher reclaims (brief)
        except BaseException:
            f.close()
            raise
        locks[path] = f


def reclaim_orphans(svc: Services, wait: float = 1.0) -> int:
    """At a dispatcher's start on a SQLite file: if no other live process may hold claims, expire the leases
    of every ``processing`` event (orphans of a previous run) so the first sweep runs them. Returns how many;
    0 without doing anything when another process holds the lock, or the database is not a SQLite file.

    ``wait`` covers a dead `serve`'s pool children, which leave a moment after it."""
    path = _lock_path(svc)
    if path is None:
        return 0
    with _LOCKS_LOCK:
        locks = _own_locks()
        if path in locks:
            _HOLDERS.setdefault(path, set()).add(id(svc))
            return 0  # this process claims already: its own claims are live
        f = open(path, "ab")  # noqa: SIM115 - kept (as the shared lock) once the reclaim is done
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        log.info("another process works on this database: its claims expire with their leases")
                        f.close()
                        return 0
                    time.sleep(0.05)
            now = utcnow()
            with svc.engine.begin() as conn:
                n = int(conn.execute(
                    update(Event)
                    .where(Event.status == EventStatus.PROCESSING)
                    .values(lease_until=now - dt.timedelta(microseconds=1))
                ).rowcount)
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # from now on this process claims too
        except BaseException:
            f.close()
            raise
        locks[path] = f
        _HOLDERS.setdefault(path, set()).add(id(svc))
    if n:
        log.warning("took back %d event(s) left processing by a previous run", n)
    return n


def release_claimer(svc: Services) -> None:
    """When ``svc`` closes: drop this process's shared lock once no other open Services of it uses the file."""
    path = _lock_path(svc)
    if path is None:
        return
    with _LOCKS_LOCK:
        locks = _own_locks()
        holders = _HOLDERS.get(path)
        if holders is None:
            return
        holders.discard(id(svc))
        if not holders:
            del _HOLDERS[path]
            f = locks.pop(path, None)
            if f is not None:
                f.close()
