"""Run the per-frame statements on SQLite's driver connection, compiled once by SQLAlchemy.

A processed frame runs about six short statements. Through ``Connection.execute`` each pays ~60-70 us of
SQLAlchemy's execution machinery (cache key, execution context, result set-up, events) on top of ~15-25 us
in SQLite itself (bench/pipeline.py). Here a Core statement is compiled once per dialect and run on the
caller's transaction through the sqlite3 cursor, with SQLAlchemy's own bind and result processors for each
parameter and column, so values are stored and read back exactly as the ORM would. The statement is still
defined once, in SQLAlchemy; PostgreSQL keeps the ordinary path (``execute`` falls back to it).
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
    """One statement compiled for SQLite: its SQL, where each positional parameter comes from, and how each
    parameter and RETURNING column is converted."""

    def __init__(self, stmt: Executable, dialect: Dialect, column_keys: Sequence[str] | None) -> None:
        assert isinstance(stmt, ClauseElement)
        compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) if column_keys else None)
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch:
            # Python-side column defaults are evaluated by SQLAlchemy's execution context, which this skips.
            names = [c.key for c in [*compiled.insert_prefetch, *compiled.update_prefetch]]
            raise ValueError(f"statement needs Python-side defaults for {names}: pass those values")
        if compiled.positiontup is None:
            raise ValueError("only positional (qmark) dialects are supported")
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("statements with expanding (IN) or literal-execute parameters are not supported")
        self.sql = compiled.string
        # Each position takes a caller's parameter (a bindparam() without a value) or a value the statement
        # fixed when it was built (a literal in values() or where(), LIMIT 1), converted once here.
        self.slots: list[tuple[str | None, Any, Processor]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            process = bind.type._cached_bind_processor(dialect)
            if bind.required or bind.callable is not None:
                self.slots.append((bind.key, None, process))
            else:
                value = bind.effective_value
                self.slots.append((None, process(value) if process else value, None))
        # A SELECT's columns, or an INSERT/UPDATE's RETURNING columns (none without RETURNING).
        self.results: list[Processor] = [col.type._cached_result_processor(dialect, None)
                                         for col in getattr(stmt, "exported_columns", ())]

    def parameters(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for key, fixed, process in self.slots:
            if key is None:
                out.append(fixed)
            else:
                # Processors see None too, as SQLAlchemy calls them (JSON stores None as 'null').
                out.append(params[key] if process is None else process(params[key]))
        return tuple(out)

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(p(v) if p is not None else v for p, v in zip(self.results, raw, strict=True))


_compiled: dict[tuple[int, tuple[str, ...] | None], tuple[Executable, Compiled]] = {}


def compiled_for(stmt: Executable, dialect: Dialect, column_keys: Sequence[str] | None = None) -> Compiled:
    key = (id(stmt), tuple(column_keys) if column_keys else None)
    entry = _compiled.get(key)
    if entry is None or entry[0] is not stmt:
        entry = (stmt, Compiled(stmt, dialect, column_keys))  # keeps stmt alive, so its id is not reused
        _compiled[key] = entry
    return entry[1]


def execute(conn: Connection, stmt: Executable, params: Mapping[str, Any] | list[Mapping[str, Any]]) -> Result:
    """``conn.execute(stmt, params)`` for the hot statements: on SQLite, straight on the driver connection
    inside ``conn``'s transaction; elsewhere, SQLAlchemy's own path.

    The statement must be built once (cached) and take every value it inserts: see ``Compiled``.
    """
    if conn.dialect.name != "sqlite":
        return conn.execute(stmt, params)
    many = isinstance(params, list)
    rows_in = params if isinstance(params, list) else [params]
    if not rows_in:
        return DirectResult([], 0)
    compiled = compiled_for(stmt, conn.dialect, sorted(rows_in[0]) if _is_insert(stmt) else None)
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    try:
        if many:
            cursor = driver.executemany(compiled.sql, [compiled.parameters(p) for p in rows_in])
            return DirectResult([], cursor.rowcount)
        cursor = driver.execute(compiled.sql, compiled.parameters(rows_in[0]))
        rows = [compiled.row(r) for r in cursor.fetchall()] if compiled.results else []
        return DirectResult(rows, cursor.rowcount)
    except sqlite3.Error as e:
        # As SQLAlchemy would raise it: a lock held past busy_timeout is still an OperationalError (503, retry).
        raise exc.DBAPIError.instance(compiled.sql, rows_in, e, sqlite3.Error) from e


def _is_insert(stmt: Executable) -> bool:
    return bool(getattr(stmt, "is_insert", False))
