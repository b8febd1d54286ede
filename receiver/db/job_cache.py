"""The deployment-wide GetLiveSnapshotJob cache in the database (when the broker is not Redis: the embedded
default, worker processes on one SQLite file, or several `serve`/`worker` on one PostgreSQL).

One row per job: the answer (``body``, JSON; NULL for a job ICE does not know) until ``expires_at_ms``, and the
lock of the process asking ICE (``lock_until_ms``, ``lock_owner``). Times are epoch milliseconds, so every
backend compares them alike. See receiver/adapters/ice_cache.py for the protocol.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any, cast

from sqlalchemy import BigInteger, Engine, String, Table, Text, delete, or_, select, update
from sqlalchemy.orm import Mapped, mapped_column

from receiver.db.engine import insert_for
from receiver.db.models import Base

# Rows of jobs nobody asked about for this long are deleted (forged job ids would otherwise pile up).
KEEP_EXPIRED_MS = 3600 * 1000
CLEAN_EVERY_S = 300.0


class JobCacheEntry(Base):
    __tablename__ = "job_cache"

    job_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    body: Mapped[str | None] = mapped_column(Text)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    lock_until_ms: Mapped[int | None] = mapped_column(BigInteger)
    lock_owner: Mapped[str | None] = mapped_column(String(64))


T = cast(Table, JobCacheEntry.__table__)


class DbJobCache:
    def __init__(self, engine: Engine, read_engine: Engine | None = None) -> None:
        self._engine, self._read = engine, read_engine or engine
        self._token = f"{os.getpid()}-{uuid.uuid4().hex[:16]}"
        self._next_clean = 0.0
        self._clean_lock = threading.Lock()

    def get(self, job_id: str) -> tuple[float, dict[str, Any] | None] | None:
        now = _now_ms()
        with self._read.connect() as conn:
            row = conn.execute(select(T.c.body, T.c.expires_at_ms)
                               .where(T.c.job_id == job_id, T.c.expires_at_ms > now)).first()
        if row is None:
            return None
        return row.expires_at_ms / 1000, (None if row.body is None else json.loads(row.body))

    def put(self, job_id: str, raw: dict[str, Any] | None, expires_at: float) -> None:
        body = None if raw is None else json.dumps(raw)
        ms = int(expires_at * 1000)
        with self._engine.begin() as conn:
            stmt = insert_for(conn.dialect.name)(T).values(job_id=job_id, body=body, expires_at_ms=ms)
            conn.execute(stmt.on_conflict_do_update(index_elements=[T.c.job_id],
                                                    set_={"body": body, "expires_at_ms": ms}))
        self._clean()

    def try_lock(self, job_id: str, seconds: float) -> bool:
        now = _now_ms()
        until = now + int(seconds * 1000)
        with self._engine.begin() as conn:
            ins = insert_for(conn.dialect.name)(T).values(job_id=job_id, body=None, expires_at_ms=0,
                                                          lock_until_ms=until, lock_owner=self._token)
            # RETURNING, not rowcount: psycopg reports no row count for an INSERT that conflicted or not.
            if conn.execute(ins.on_conflict_do_nothing(index_elements=[T.c.job_id]).returning(T.c.job_id)).first():
                return True
            # Only an expired entry may be refreshed, and only once: the winner's answer ends the others' turn.
            taken = conn.execute(
                update(T)
                .where(T.c.job_id == job_id, T.c.expires_at_ms <= now,
                       or_(T.c.lock_until_ms.is_(None), T.c.lock_until_ms <= now))
                .values(lock_until_ms=until, lock_owner=self._token)
            ).rowcount
        return bool(taken == 1)

    def unlock(self, job_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(T).where(T.c.job_id == job_id, T.c.lock_owner == self._token)
                         .values(lock_until_ms=None, lock_owner=None))

    def invalidate(self, job_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(T).where(T.c.job_id == job_id).values(expires_at_ms=0))

    def _clean(self) -> None:
        with self._clean_lock:
            if time.monotonic() < self._next_clean:
                return
            self._next_clean = time.monotonic() + CLEAN_EVERY_S
        now = _now_ms()
        with self._engine.begin() as conn:
            conn.execute(delete(T).where(T.c.expires_at_ms < now - KEEP_EXPIRED_MS,
                                         or_(T.c.lock_until_ms.is_(None), T.c.lock_until_ms < now)))


def _now_ms() -> int:
    return int(time.time() * 1000)
