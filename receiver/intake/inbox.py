"""Recording events in the inbox table, deduplicated by (job, identity) even under concurrent delivery.

The callback path is the hot path. Statements are built once (SQLAlchemy caches their compiled form) and run
on a Core connection; all the rows of a write go in one INSERT .. ON CONFLICT DO NOTHING RETURNING: on
PostgreSQL as one array per column (``postgres_array_insert_bypass``), on SQLite as multi-row VALUES
(``sqlite_bulk_insert_bypass``), elsewhere as SQLAlchemy's multi-row INSERTs ("insertmanyvalues").
Concurrent requests share one transaction through a small group commit, so a burst of callbacks costs one
write lock, one INSERT and one commit instead of one each. Profiled under load (bench/callbacks.py), waking
every waiting request after each commit (a Condition.notify_all) was the largest single cost, so each request
waits on its own lock and the leader wakes exactly the requests it wrote, then hands the lead to the oldest
one still queued.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, select, tuple_
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from receiver.db.engine import column_cast, insert_for, single_statement
from receiver.db.models import Event, EventOrigin, EventStatus, utcnow
from receiver.intake.parse import EventItem

log = logging.getLogger(__name__)

_table = cast(Table, Event.__table__)
_COLUMNS = ("job_id", "identity", "origin", "key_from_ice", "status", "attempts", "oss_object", "oss_bucket",
            "oss_endpoint",
            "create_timestamp_ms", "is_overlay", "raw_body", "received_at", "updated_at", "next_attempt_at",
            "account", "user_id")
# Keys per SELECT of already-recorded events (2 bound parameters each, well under any driver's limit).
_LOOKUP_CHUNK = 400
# Rows per SQLite INSERT: at 17 parameters a row, under the 999 variables of SQLite builds before 3.32.
_SQLITE_CHUNK = 58


@dataclass(frozen=True)
class Recorded:
    event_ids: list[int]  # in item order, existing ids for duplicates
    new_ids: list[int]


@lru_cache(maxsize=4)
def _insert(dialect: str) -> Executable:
    insert = insert_for(dialect)
    # RETURNING order is not the VALUES order once conflicts skip rows, hence the key columns.
    return (
        insert(_table)
        .values({c: bindparam(c) for c in _COLUMNS})
        .on_conflict_do_nothing(index_elements=["job_id", "identity"])
        .returning(_table.c.id, _table.c.job_id, _table.c.identity)
    )


def _params(item: EventItem, origin: EventOrigin, now: Any) -> dict[str, Any]:
    return {
        "job_id": item.job_id, "identity": item.identity, "origin": EventOrigin(origin).value,
        "status": EventStatus.PENDING.value, "attempts": 0,
        "key_from_ice": origin == EventOrigin.RECONCILE,
        "oss_object": item.oss_object, "oss_bucket": item.oss_bucket, "oss_endpoint": item.oss_endpoint,
        "create_timestamp_ms": item.create_timestamp_ms, "is_overlay": item.is_overlay,
        "raw_body": item.raw[:65536], "received_at": now, "updated_at": now, "next_attempt_at": now,
        "account": item.account, "user_id": (item.user_id or None) and item.user_id[:64],
    }


@lru_cache(maxsize=_SQLITE_CHUNK)
def _sqlite_insert_sql(rows: int) -> str:  # only for sqlite_bulk_insert_bypass
    one = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    return (f"INSERT INTO {_table.name} ({', '.join(_COLUMNS)}) VALUES {', '.join([one] * rows)} "
            "ON CONFLICT (job_id, identity) DO NOTHING RETURNING id, job_id, identity")


def sqlite_bulk_insert_bypass(conn: Connection, groups: list[tuple[list[EventItem], EventOrigin]],
                              now: Any) -> dict[tuple[str, str], int]:
    """BYPASS: the same INSERT as _insert's, as hand-written multi-row SQL on the sqlite3 driver connection,
    inside the caller's Core transaction.

    What it bypasses: ``conn.execute(_insert("sqlite"), rows)``, i.e. SQLAlchemy's insertmanyvalues with its
    execution context, per-row bind processing and cursor events (nothing on this path relies on those). The
    timestamp is rendered once by the column type's own bind processor, so the stored format stays
    SQLAlchemy's. Why: it was a large share of a callback batch's time, measured with bench/callbacks.py
    (bench/RESULTS.md, callbacks section, and its git history). When to remove it: when the plain
    ``conn.execute`` path is within the noise of this one on bench/callbacks.py (re-measure after each
    SQLAlchemy upgrade by routing SQLite through _insert_many); then delete this function and
    _sqlite_insert_sql.
    """
    render = _table.c.received_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    assert render is not None  # SQLite stores datetimes as text; the claim query compares that text
    stamp = render(now)
    values = []
    for items, origin in groups:
        for item in items:
            row = _params(item, origin, stamp)
            values.append(tuple(row[c] for c in _COLUMNS))
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    inserted: dict[tuple[str, str], int] = {}
    for i in range(0, len(values), _SQLITE_CHUNK):
        chunk = values[i : i + _SQLITE_CHUNK]
        params = [v for row in chunk for v in row]
        cursor = dbapi.execute(_sqlite_insert_sql(len(chunk)), params)
        inserted.update({(job, identity): eid for eid, job, identity in cursor})
    return inserted


# Columns whose value is the same for every row of a write (_params): sent once, not as arrays.
_CONSTANT = ("status", "attempts", "received_at", "updated_at", "next_attempt_at")
_PER_ROW = tuple(c for c in _COLUMNS if c not in _CONSTANT)


@lru_cache(maxsize=2)
def _postgres_insert_sql(dialect: Any) -> str:
    def cast(column: str) -> str:
        return column_cast(_table, column, dialect)

    # %b: binary parameters, which psycopg dumps without quoting every array element (its text arrays do)
    per_row = ", ".join(f"%b::{cast(c)}[]" for c in _PER_ROW)
    select_list = ", ".join(f"%b::{cast(c)}" if c in _CONSTANT else f"u.{c}" for c in _COLUMNS)
    return (f"INSERT INTO {_table.name} ({', '.join(_COLUMNS)}) SELECT {select_list} "
            f"FROM unnest({per_row}) AS u({', '.join(_PER_ROW)}) "
            "ON CONFLICT (job_id, identity) DO NOTHING RETURNING id, job_id, identity")


def postgres_array_insert_bypass(conn: Connection, groups: list[tuple[list[EventItem], EventOrigin]],
                                 now: Any) -> dict[tuple[str, str], int]:
    """BYPASS: the same INSERT as _insert's, with the rows passed as one array per column and unnested by
    PostgreSQL, sent with ``exec_driver_sql`` in the caller's transaction (or autocommit).

    What it bypasses: ``conn.execute(_insert("postgresql"), rows)``, i.e. SQLAlchemy's insertmanyvalues, which
    renders 17 placeholders per row, and its per-row bind processing. Why: psycopg caches the parsing of a
    statement's placeholders only up to 50 parameters, so from three rows on every callback batch was parsed
    again (a regular expression over every placeholder); with SQLAlchemy's per-row work that came to ~100 us
    of CPU per row. Here the statement has the same 17 parameters whatever the rows, is parsed once and is
    prepared by psycopg after a few uses (bench/RESULTS.md, callbacks on gunicorn + PostgreSQL). When to
    remove it: when _insert_many is within the noise of this one on bench/scale.py's callbacks (re-measure
    after SQLAlchemy or psycopg upgrades by routing PostgreSQL through it); then delete this function and
    _postgres_insert_sql.
    """
    rows = [_params(item, origin, now) for items, origin in groups for item in items]
    # In the statement's order: the constants of the select list, then the arrays unnest reads.
    params: list[Any] = [rows[0][c] for c in _COLUMNS if c in _CONSTANT]
    params.extend([row[c] for row in rows] for c in _PER_ROW)
    result = conn.exec_driver_sql(_postgres_insert_sql(conn.dialect), tuple(params))
    return {(job, identity): eid for eid, job, identity in result}


def one_statement_rows(conn: Connection | Engine) -> int:
    """Up to this many rows, the inbox INSERT is one statement: any number on PostgreSQL (the rows travel as
    arrays), else SQLAlchemy's insertmanyvalues page, bounded by the parameters a statement may carry."""
    dialect = conn.dialect
    if dialect.name == "postgresql":
        return sys.maxsize
    return min(dialect.insertmanyvalues_page_size, dialect.insertmanyvalues_max_parameters // len(_COLUMNS))


def _insert_many(conn: Connection, groups: list[tuple[list[EventItem], EventOrigin]],
                 now: Any) -> dict[tuple[str, str], int]:
    """_insert through SQLAlchemy (insertmanyvalues): the dialects without a bypass of their own."""
    rows = [_params(item, origin, now) for items, origin in groups for item in items]
    return {(job, identity): eid for eid, job, identity in conn.execute(_insert(conn.dialect.name), rows)}


def _record_groups(conn: Connection, groups: list[tuple[list[EventItem], EventOrigin]],
                   committed: list[int] | None = None) -> list[Recorded]:
    """Record several requests' items in one statement; each gets its own Recorded, in order.

    ``committed``: filled with the new ids as soon as the INSERT returns (in autocommit they are committed
    then, whatever happens next).

    An item is new only where its key first appears: a second copy later in the same write (ICE retrying
    while the first delivery is still being written) is a duplicate of the first, as it would be a moment
    later.
    """
    now = utcnow()
    inserted: dict[tuple[str, str], int] = {}
    if any(items for items, _ in groups):
        insert = {"sqlite": sqlite_bulk_insert_bypass, "postgresql": postgres_array_insert_bypass}.get(
            conn.dialect.name, _insert_many)
        inserted = insert(conn, groups, now)
    if committed is not None:
        committed.extend(inserted.values())
    keys = [(item.job_id, item.identity) for items, _ in groups for item in items]
    missing = list({k for k in keys if k not in inserted})
    existing: dict[tuple[str, str], int] = {}
    for i in range(0, len(missing), _LOOKUP_CHUNK):
        chunk = missing[i : i + _LOOKUP_CHUNK]
        query = select(_table.c.id, _table.c.job_id, _table.c.identity).where(
            tuple_(_table.c.job_id, _table.c.identity).in_(chunk))
        existing.update({(job, identity): eid for eid, job, identity in conn.execute(query)})
    claimed: set[tuple[str, str]] = set()
    out = []
    for items, _ in groups:
        ids: list[int] = []
        new: list[int] = []
        for item in items:
            key = (item.job_id, item.identity)
            if key in inserted and key not in claimed:
                claimed.add(key)
                new.append(inserted[key])
            ids.append(inserted[key] if key in inserted else existing[key])
        out.append(Recorded(event_ids=ids, new_ids=new))
    return out


def record_events(db: Session | Connection, items: list[EventItem],
                  origin: EventOrigin = EventOrigin.CALLBACK) -> Recorded:
    """Insert what is new; ON CONFLICT DO NOTHING makes a concurrent duplicate a no-op, not an error."""
    conn = db.connection() if isinstance(db, Session) else db
    [recorded] = _record_groups(conn, [(items, origin)])
    return recorded


@dataclass(eq=False)
class _Entry:
    items: list[EventItem]
    origin: EventOrigin
    # Held until this entry is written or handed the lead; a bare Lock is the cheapest thing to block on.
    wake: threading.Lock = field(default_factory=threading.Lock)
    result: Recorded | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommitter:
    """Leader-based group commit: whoever finds no write in progress writes everything queued so far."""

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._autocommit = single_statement(engine) is not engine
        # Given the ids of events committed by a write whose answers failed (see _write); set by the app to
        # its dispatcher's submit.
        self.on_unanswered: Callable[[list[int]], None] | None = None
        self._lock = threading.Lock()
        self._queue: list[_Entry] = []
        self._writing = False
        # Only the leader touches it, one at a time. Held between writes because checking a connection out
        # of the pool (pre-ping) and resetting it on return was a measurable share of a callback's CPU under
        # load (bench/callbacks.py).
        self._conn: Connection | None = None

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def record(self, items: list[EventItem], origin: EventOrigin = EventOrigin.CALLBACK) -> Recorded:
        entry = _Entry(items, origin)
        entry.wake.acquire()
        with self._lock:
            self._queue.append(entry)
            lead = not self._writing
            self._writing = True
        if not lead:
            entry.wake.acquire()  # released by a leader: either written, or now the leader
            if entry.done:
                return self._unwrap(entry)
        # The leader is always at the head of the queue, so its own entry is in the first batch.
        with self._lock:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        try:
            self._write(batch)
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].wake.release()  # the lead passes on; _writing stays True
                else:
                    self._writing = False
            for other in batch:
                if not other.done:  # only if _write itself was interrupted (KeyboardInterrupt and the like)
                    other.error, other.done = RuntimeError("the group commit was interrupted"), True
                if other is not entry:
                    other.wake.release()
        return self._unwrap(entry)

    def _write(self, batch: list[_Entry]) -> None:
        try:
            groups = [(e.items, e.origin) for e in batch]
            if sum(len(items) for items, _ in groups) > one_statement_rows(self.engine):
                # Several INSERT statements: one transaction around them, on a connection of its own.
                with self.engine.begin() as own:
                    results = _record_groups(own, groups)
                self._finish(batch, results)
                return
            if self._conn is None:
                # On PostgreSQL in autocommit: the write is one INSERT (then, for duplicates, a read), atomic
                # on its own, so psycopg's BEGIN and COMMIT round trips would buy nothing.
                self._conn = single_statement(self.engine).connect()
            conn = self._conn
            committed: list[int] = []
            try:
                with conn.begin():
                    results = _record_groups(conn, groups, committed)
            except BaseException:
                if self._autocommit and committed:
                    # The INSERT committed but the look-up of duplicates after it failed: these requests get
                    # an error and ICE's retry will find their events as duplicates, which are not dispatched
                    # again. Dispatch them now rather than leave them to the sweeper's grace.
                    self._hand_over(committed)
                # The next write starts from a fresh pooled connection (pre-pinged), whatever went wrong.
                self._conn = None
                conn.close()
                raise
        except Exception as e:
            if len(batch) == 1 or isinstance(e, OperationalError | PoolTimeout):
                # The database itself is unavailable (or locked past the intake's short timeout): every
                # request in the batch gets its 503 now, instead of one timeout after another.
                for entry in batch:
                    entry.error, entry.done = e, True
                return
            # One bad entry must not fail its neighbours: fall back to one transaction each.
            for entry in batch:
                self._write([entry])
            return
        self._finish(batch, results)

    def _hand_over(self, ids: list[int]) -> None:
        if self.on_unanswered is not None:
            try:
                self.on_unanswered(ids)
            except Exception:
                log.exception("could not dispatch %d recorded event(s); the sweeper will", len(ids))

    @staticmethod
    def _finish(batch: list[_Entry], results: list[Recorded]) -> None:
        for entry, result in zip(batch, results, strict=True):
            entry.result, entry.done = result, True

    @staticmethod
    def _unwrap(entry: _Entry) -> Recorded:
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        return entry.result
