"""Run the per-frame statements on SQLite's driver connection, compiled once by SQLAlchemy.

A processed frame runs about six short statements. Through ``Connection.execute`` each pays ~60-70 us of
SQLAlchemy's execution machinery (cache key, execution context, result set-up, events) on top of ~15-25 us
in SQLite itself (bench/RESULTS.md, fourth pass). Here a Core statement is compiled once per dialect and key
set and run in the caller's transaction on the sqlite3 connection, with SQLAlchemy's own bind and result
processors for each parameter and column, so values are stored and read back exactly as the ORM would. The
statement is still defined once, in SQLAlchemy; PostgreSQL keeps the ordinary path (``execute`` falls back).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Connection, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

Processor = Callable[[Any], Any] | None


class Result(Protocol):
    """What the hot paths read from a result: the subset SQLAlchemy's CursorResult and DirectResult share."""

    @property
    def rowcount(self) -> int: ...

    def one_or_none(self) -> Any: ...

    def scalar_one_or_none(self) -> Any: ...


class DirectResult:
    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def one_or_none(self) -> tuple[Any, ...] | None:
        if len(self.rows) > 1:
            raise exc.MultipleResultsFound("more than one row where at most one was expected")
        return self.rows[0] if self.rows else None

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


class Compiled:
    """One statement compiled for SQLite with the caller's keys, as ``Connection.execute`` compiles it: its
    SQL, the order of its parameters, and how each parameter and result column is converted."""

    def __init__(self, stmt: Executable, dialect: Dialect, keys: Sequence[str]) -> None:
        assert isinstance(stmt, ClauseElement)
        # The caller's keys decide an INSERT's columns and can add to an UPDATE's SET, as in SQLAlchemy.
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch:
            # Python-side column defaults are evaluated by SQLAlchemy's execution context, which this skips.
            names = [c.key for c in [*compiled.insert_prefetch, *compiled.update_prefetch]]
            raise ValueError(f"statement needs Python-side defaults for {names}: pass those values")
        if compiled.positiontup is None:
            raise ValueError("only positional (qmark) dialects are supported")
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("statements with expanding (IN) or literal-execute parameters are not supported")
        self.compiled = compiled
        self.sql = compiled.string
        processors = compiled._bind_processors
        self.binds: list[tuple[str, Processor]] = []
        for name in compiled.positiontup:
            process = processors.get(name)
            if process is not None and not callable(process):
                raise ValueError("tuple-typed parameters are not supported")
            self.binds.append((name, process))
        # A SELECT's columns or a RETURNING clause, in the order SQLite returns them.
        self.results: list[Processor] = [entry.type._cached_result_processor(dialect, None)
                                         for entry in compiled._result_columns]

    def parameters(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        # construct_params resolves values as SQLAlchemy does: the caller's, else the statement's own
        # (literals, LIMIT 1), and raises for a missing required one. Processors see None too (JSON: 'null').
        values = self.compiled.construct_params(params)
        return tuple(values[name] if process is None else process(values[name]) for name, process in self.binds)

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(p(v) if p is not None else v for p, v in zip(self.results, raw, strict=True))


# Keyed by identity (statements and dialects are held, so neither id is reused while cached). The callers'
# statements are built once, so this stays small; the bound only stops a statement built per call from
# growing it without end.
_MAX_CACHED = 128
_cache: dict[tuple[int, int, tuple[str, ...]], tuple[Executable, Dialect, Compiled]] = {}


def compiled_for(stmt: Executable, dialect: Dialect, keys: Sequence[str]) -> Compiled:
    key = (id(stmt), id(dialect), tuple(keys))
    entry = _cache.get(key)
    if entry is None:
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()
        entry = _cache[key] = (stmt, dialect, Compiled(stmt, dialect, keys))
    return entry[2]


def execute(conn: Connection, stmt: Executable, params: Mapping[str, Any] | list[Mapping[str, Any]]) -> Result:
    """``conn.execute(stmt, params)`` for the hot statements: with pysqlite, straight on the driver connection
    inside ``conn``'s transaction; otherwise (PostgreSQL), SQLAlchemy's own path.

    Writes must run inside ``engine.begin()`` (this does not autobegin); statements must take every value
    they insert (no Python-side defaults). Connection events (before_cursor_execute, echo) do not see them.
    With RETURNING, ``rowcount`` counts the rows returned (SQLAlchemy's reads 0 there on SQLite).
    """
    rows_in = params if isinstance(params, list) else [params]
    if not rows_in:
        raise ValueError("an empty list of parameter sets")  # SQLAlchemy deprecates it too
    if conn.dialect.driver != "pysqlite" or conn.dialect.paramstyle != "qmark":
        return conn.execute(stmt, params)
    if not conn.in_transaction() and not getattr(stmt, "is_select", False):
        # SQLAlchemy would autobegin (BEGIN IMMEDIATE) and roll back on close; the driver would commit at once.
        raise ValueError("run writes inside engine.begin()")
    compiled = compiled_for(stmt, conn.dialect, sorted(rows_in[0]))
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    try:
        values = [compiled.parameters(p) for p in rows_in]
    except exc.SQLAlchemyError:
        raise
    except Exception as e:  # a processor refusing a value, as SQLAlchemy reports it
        raise exc.StatementError(str(e), compiled.sql, rows_in, e) from e
    try:
        if len(values) > 1:
            if compiled.results:
                raise ValueError("RETURNING over several parameter sets is not supported")
            cursor = driver.executemany(compiled.sql, values)
            return DirectResult([], cursor.rowcount)
        cursor = driver.execute(compiled.sql, values[0])
        rows = [compiled.row(r) for r in cursor.fetchall()] if cursor.description is not None else []
        return DirectResult(rows, cursor.rowcount)
    except sqlite3.Error as e:
        # As SQLAlchemy would raise it: a lock held past busy_timeout is still an OperationalError (503, retry).
        raise exc.DBAPIError.instance(compiled.sql, rows_in, e, sqlite3.Error) from e
