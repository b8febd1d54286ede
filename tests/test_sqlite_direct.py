"""sqlite_direct runs the per-frame statements on the driver connection: it must store and return exactly
what SQLAlchemy's own path would, refuse statements it cannot run faithfully, and fail as SQLAlchemy fails.
(On PostgreSQL it is SQLAlchemy's path: the pipeline tests re-run in test_postgres.py cover that.)"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc

from receiver import sqlite_direct
from receiver.db import make_engine
from receiver.models import UTCDateTime

meta = MetaData()
things = Table(
    "things", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(40), nullable=False),
    Column("at", UTCDateTime()),
    Column("flag", Boolean),
    Column("doc", JSON),
    Column("n", Integer, default=lambda: 7),  # a Python-side default
)
INSERT = insert(things).returning(things.c.id)
SELECT = select(things.c.name, things.c.at, things.c.flag, things.c.doc).where(things.c.id == bindparam("id"))
CLAIM = (update(things).where(things.c.id == bindparam("id"), things.c.name != "taken")
         .values(name="taken", at=bindparam("at")).returning(things.c.at, things.c.flag, things.c.doc))

ZONE = dt.timezone(dt.timedelta(hours=8))  # a non-UTC zone: stored as UTC, read back aware
ROW: dict[str, Any] = {"name": "a", "at": dt.datetime(2026, 11, 29, 10, 3, 4, 500, tzinfo=ZONE), "flag": True,
                       "doc": {"blurhash": "LEHV6n", "n": [1, 2]}, "n": 3}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = make_engine(f"sqlite:///{tmp_path / 'direct.db'}", busy_timeout_s=0.2)
    meta.create_all(e)
    return e


def stored(engine: Engine, row_id: int) -> tuple[Any, ...]:
    """The row as SQLite holds it (text dates, 0/1, JSON text): what both paths must agree on."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        row = raw.execute("SELECT name, at, flag, doc, n FROM things WHERE id = ?", (row_id,)).fetchone()
        assert row is not None
        return tuple(row)


@pytest.mark.parametrize("values", [ROW, {**ROW, "at": dt.datetime(2026, 1, 2, 3, 4, 5)},
                                    {**ROW, "flag": False, "doc": None, "at": None}])
def test_values_are_stored_and_read_back_as_sqlalchemy_does(engine: Engine, values: dict[str, Any]) -> None:
    with engine.begin() as conn:
        direct_id = sqlite_direct.execute(conn, INSERT, values).scalar_one_or_none()
        alchemy_id = conn.execute(INSERT, values).scalar_one_or_none()
    assert isinstance(direct_id, int) and isinstance(alchemy_id, int) and direct_id != alchemy_id
    # Aware datetimes become UTC text, naive ones are taken as UTC, booleans 0/1, None in JSON is 'null'.
    assert stored(engine, direct_id) == stored(engine, alchemy_id)
    with engine.connect() as conn:
        direct = sqlite_direct.execute(conn, SELECT, {"id": direct_id}).one_or_none()
        alchemy = conn.execute(SELECT, {"id": alchemy_id}).one_or_none()
    assert direct == tuple(alchemy)
    assert direct is not None
    if values["at"] is not None:
        assert direct[1].tzinfo == dt.UTC and direct[1] == values["at"].replace(tzinfo=values["at"].tzinfo or dt.UTC)
    assert direct[2] is values["flag"]
    assert direct[3] == values["doc"]


def test_returning_rows_rowcount_and_fixed_values(engine: Engine) -> None:
    with engine.begin() as conn:
        row_id = conn.execute(INSERT, {**ROW, "flag": False}).scalar_one()
        when = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)
        first = sqlite_direct.execute(conn, CLAIM, {"id": row_id, "at": when})
        # The statement's own literal ("taken") went in; the RETURNING values come back converted.
        assert first.rowcount == 1
        assert first.one_or_none() == (when, False, ROW["doc"])
        again = sqlite_direct.execute(conn, CLAIM, {"id": row_id, "at": when})
        assert again.rowcount == 0 and again.one_or_none() is None and again.scalar_one_or_none() is None
    assert stored(engine, row_id)[0] == "taken"


def test_executemany_and_an_empty_batch(engine: Engine) -> None:
    with engine.begin() as conn:
        result = sqlite_direct.execute(conn, insert(things), [{**ROW, "name": f"r{i}"} for i in range(5)])
        assert result.rowcount == 5
        assert sqlite_direct.execute(conn, insert(things), []).rowcount == 0
    with engine.connect() as conn:
        names = conn.execute(select(things.c.name).order_by(things.c.id)).scalars().all()
    assert names == ["r0", "r1", "r2", "r3", "r4"]


def test_a_statement_needing_python_defaults_is_refused_not_run_without_them(engine: Engine) -> None:
    without_n = {k: v for k, v in ROW.items() if k != "n"}
    with engine.begin() as conn, pytest.raises(ValueError, match=r"Python-side defaults for \['n'\]"):
        sqlite_direct.execute(conn, insert(things), without_n)
    with engine.connect() as conn:
        assert conn.execute(select(things.c.id)).first() is None


def test_more_than_one_row_where_one_is_expected(engine: Engine) -> None:
    every = select(things.c.id).where(things.c.name == bindparam("name"))
    with engine.begin() as conn:
        sqlite_direct.execute(conn, insert(things), [ROW, ROW])
        with pytest.raises(sa_exc.MultipleResultsFound):
            sqlite_direct.execute(conn, every, {"name": "a"}).one_or_none()


def test_driver_errors_are_sqlalchemys(engine: Engine, tmp_path: Path) -> None:
    # A lock held past busy_timeout stays an OperationalError (the callers' 503 and retry), a constraint
    # an IntegrityError.
    holder = sqlite3.connect(tmp_path / "direct.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with engine.connect() as conn, pytest.raises(sa_exc.OperationalError, match="locked"):
            sqlite_direct.execute(conn, insert(things), ROW)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with engine.begin() as conn, pytest.raises(sa_exc.IntegrityError, match="NOT NULL"):
        sqlite_direct.execute(conn, insert(things), {**ROW, "name": None})


def test_expanding_parameters_are_refused(engine: Engine) -> None:
    in_list = select(things.c.id).where(things.c.id.in_(bindparam("ids", expanding=True)))
    with engine.connect() as conn, pytest.raises(ValueError, match="expanding"):
        sqlite_direct.execute(conn, in_list, {"ids": [1, 2]})
