"""The deployment-wide GetLiveSnapshotJob cache in the database (when the broker is not Redis: the embedded
default, worker processes on one SQLite file, or several `serve`/`worker` on one PostgreSQL).

One row per job: the answer (``body``, JSON; NULL for a job ICE does not know) until ``expires_at_ms``, and the
lock of the process asking ICE (``lock_until_ms``, ``lock_owner``). Times are epoch milliseconds on one clock
for the whole deployment: PostgreSQL's (clock_timestamp()), or on SQLite, whose processes share one host, the
host's. A process whose own clock is off therefore neither stretches nor cuts an entry short for the others.
See receiver/adapters/ice_cache.py for the protocol.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    String,
    Table,
    Text,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql import ColumnElement

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
        # One owner token per lock taken, not per process: a child forked from this process (Celery's prefork
        # pool) must not be able to release a lock its parent or a sibling took.
        self._held: dict[str, str] = {}
        self._next_clean = 0.0
        self._clean_lock = threading.Lock()

    def get(self, key: str) -> tuple[float, dict[str, Any] | None] | None:
        with self._read.connect() as conn:
            now = _now(conn)
            row = conn.execute(select(T.c.body, T.c.expires_at_ms - now)
                               .where(T.c.job_id == key, T.c.expires_at_ms > now)).first()
        if row is None:
            return None
        raw = None if row[0] is None else json.loads(row[0])  # ValueError when not JSON: the caller drops it
        if raw is not None and not isinstance(raw, dict):
            raise ValueError(f"job-cache entry is {type(raw).__name__}, not an object")
        return int(row[1]) / 1000, raw

    def put(self, key: str, raw: dict[str, Any] | None, ttl: float) -> None:
        body = None if raw is None else json.dumps(raw)
        with self._engine.begin() as conn:
            expires = _now(conn) + int(ttl * 1000)
            stmt = insert_for(conn.dialect.name)(T).values(job_id=key, body=body, expires_at_ms=expires)
            conn.execute(stmt.on_conflict_do_update(index_elements=[T.c.job_id],
                                                    set_={"body": body, "expires_at_ms": expires}))
        self._clean()

    def try_lock(self, key: str, seconds: float) -> bool:
        token = uuid.uuid4().hex[:32]
        with self._engine.begin() as conn:
            now = _now(conn)
            until = now + int(seconds * 1000)
            ins = insert_for(conn.dialect.name)(T).values(job_id=key, body=None, expires_at_ms=0,
                                                          lock_until_ms=until, lock_owner=token)
            # RETURNING, not rowcount: psycopg reports no row count for an INSERT that conflicted or not.
            taken = conn.execute(ins.on_conflict_do_nothing(index_elements=[T.c.job_id])
                                 .returning(T.c.job_id)).first() is not None
            if not taken:
                # Only an expired entry may be refreshed, and only once: the winner's answer ends the others' turn.
                taken = conn.execute(
                    update(T)
                    .where(T.c.job_id == key, T.c.expires_at_ms <= now,
                           or_(T.c.lock_until_ms.is_(None), T.c.lock_until_ms <= now))
                    .values(lock_until_ms=until, lock_owner=token)
                ).rowcount == 1
        if taken:
            self._held[key] = token
        return taken

    def unlock(self, key: str) -> None:
        token = self._held.pop(key, None)
        if token is None:
            return
        with self._engine.begin() as conn:
            conn.execute(update(T).where(T.c.job_id == key, T.c.lock_owner == token)
                         .values(lock_until_ms=None, lock_owner=None))

    def invalidate(self, key: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(T).where(T.c.job_id == key).values(expires_at_ms=0))

    def _clean(self) -> None:
        with self._clean_lock:
            if time.monotonic() < self._next_clean:
                return
            self._next_clean = time.monotonic() + CLEAN_EVERY_S
        with self._engine.begin() as conn:
            now = _now(conn)
            conn.execute(delete(T).where(T.c.expires_at_ms < now - KEEP_EXPIRED_MS,
                                         or_(T.c.lock_until_ms.is_(None), T.c.lock_until_ms < now)))


def _now(conn: Connection) -> ColumnElement[int]:
    """Now in epoch ms on the deployment's one clock: the database server's, or on SQLite the host's."""
    if conn.dialect.name == "postgresql":
        return sql_cast(func.floor(func.extract("epoch", func.clock_timestamp()) * 1000), BigInteger)
    return literal(int(time.time() * 1000), BigInteger)
