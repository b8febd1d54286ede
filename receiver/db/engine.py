"""Engines and sessions: SQLite pragmas and write locking, the read-only engine, the dialect INSERT."""

from __future__ import annotations

import re
import sqlite3
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, busy_timeout_s: float = 30.0, ping_after_idle_s: float | None = None) -> Engine:
    """``busy_timeout_s`` bounds how long a SQLite writer waits for the lock (the callback path uses a short
    one: ICE gives up after 3 s, so a 503 it will retry beats a 200 it never sees)."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # Worker threads share the engine; SQLite's own locking (WAL + busy timeout) serialises writers.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_s}
    else:
        kwargs.update(pool_size=10, max_overflow=20)
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", lambda conn, rec: _sqlite_pragmas(conn, rec, busy_timeout_s))
        event.listen(engine, "begin", _sqlite_begin)
    else:
        ping_when_idle(engine, PING_AFTER_IDLE_S if ping_after_idle_s is None else ping_after_idle_s)
    return engine


# A server connection can die between uses (a restart, an idle timeout, a proxy); a SQLite file handle cannot.
# pool_pre_ping paid a round trip on every checkout, four per processed frame, for connections that were in
# use a few milliseconds earlier. Only a connection idle for longer than this is pinged on checkout; one that
# died since its last use fails its first statement instead, and SQLAlchemy then invalidates the whole pool
# (every connection older than the failure is replaced on its next checkout): that callback answers 503 (ICE
# retries it a second later) and that event is retried, which is what "database briefly unavailable" asks.
PING_AFTER_IDLE_S = 10.0


def ping_when_idle(engine: Engine, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """SQLAlchemy's documented pessimistic-disconnect recipe (a checkout listener raising DisconnectionError,
    which makes the pool retry with a new connection), applied only to connections idle for ``idle_s``."""

    def checkin(_dbapi: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= idle_s:
            return
        try:
            alive = engine.dialect.do_ping(dbapi)
        except Exception as e:
            raise exc.DisconnectionError(f"connection died while idle in the pool: {e}") from e
        if not alive:
            raise exc.DisconnectionError("connection died while idle in the pool")

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


def single_statement(engine: Engine) -> Engine:
    """``engine`` for transactions of one statement: on PostgreSQL in autocommit, which spares the BEGIN and
    COMMIT round trips psycopg sends around it (the claim, the index probe, a failed event's status). SQLite
    keeps its own BEGIN (IMMEDIATE for writers: _sqlite_begin)."""
    if engine.dialect.name != "postgresql":
        return engine
    found = _AUTOCOMMIT.get(engine)
    if found is None:
        found = _AUTOCOMMIT[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return found


_AUTOCOMMIT: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def reader(engine: Engine) -> Engine:
    """The same engine and pool for transactions that only read (see _sqlite_begin)."""
    return engine.execution_options(**{READ_ONLY: True})


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, busy_timeout_s: float = 30.0) -> None:
    # pysqlite's implicit transactions would defer BEGIN and upgrade locks mid-transaction (deadlock-prone);
    # we issue BEGIN (IMMEDIATE for writers) ourselves in _sqlite_begin.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    cur.close()


READ_ONLY = "receiver_read_only"


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock up front: that turns lock upgrades (which fail instantly with SQLITE_BUSY)
    # into waits bounded by busy_timeout. Readers must not: with WAL they never block a writer, but a read
    # that took the write lock held off every callback for as long as it ran (an API page, a metrics
    # scrape), and a read over 2.5 s cost ICE a 503.
    sql = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
    sqlite_begin_bypass(conn, sql)


def sqlite_begin_bypass(conn: Any, sql: str) -> None:
    """BYPASS: send ``sql`` (a BEGIN) straight on the sqlite3 driver connection.

    What it bypasses: ``conn.exec_driver_sql(sql)``, SQLAlchemy's documented recipe for the pysqlite "begin"
    event, and with it SQLAlchemy's statement machinery (execution context, cursor events, echo). Why: that
    machinery cost more than the BEGIN itself, on every transaction, several per processed frame and one per
    callback batch; measured with bench/pipeline.py and bench/callbacks.py (bench/RESULTS.md and its git
    history). Errors (a lock held past busy_timeout) are wrapped as exec_driver_sql would wrap them, so callers
    still see sqlalchemy.exc.OperationalError (a 503, a retry). When to remove it: when swapping in
    ``conn.exec_driver_sql(sql)`` no longer moves bench/pipeline.py or bench/callbacks.py beyond their noise
    (re-measure after each SQLAlchemy upgrade).
    """
    try:
        conn.connection.driver_connection.execute(sql)
    except sqlite3.Error as e:
        raise exc.DBAPIError.instance(sql, (), e, sqlite3.Error) from e


def column_cast(table: Table, column: str, dialect: Any) -> str:
    """The SQL type to cast a parameter to for ``table.column``: the table's own type, so hand-written SQL
    cannot drift from the model, but without a length. A cast to VARCHAR(n) would cut a longer value silently,
    where the column itself refuses it."""
    return re.sub(r"\(\d+\)", "", table.c[column].type.compile(dialect=dialect))


def insert_for(dialect: str) -> Callable[..., Any]:
    """The dialect's INSERT construct, the one with ``on_conflict_do_nothing`` (PostgreSQL and SQLite, the two
    databases this runs on)."""
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise RuntimeError(f"unsupported database dialect {dialect!r}")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
