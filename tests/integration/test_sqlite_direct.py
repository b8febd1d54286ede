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

from receiver.db import sqlite_direct
from receiver.db.engine import make_engine
from receiver.db.models import UTCDateTime

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
CLAIM = (update(things).where(things.c.id == bindparam("row_id"), things.c.name != "taken")
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


def test_returning_rows_rowcount_and_literals_as_sqlalchemy(engine: Engine) -> None:
    when = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)
    with engine.begin() as conn:
        ids = [conn.execute(INSERT, {**ROW, "flag": False}).scalar_one() for _ in range(2)]
        first = sqlite_direct.execute(conn, CLAIM, {"row_id": ids[0], "at": when})
        theirs = conn.execute(CLAIM, {"row_id": ids[1], "at": when})
        # The statement's own literal ("taken") went in; the RETURNING values come back converted. (Here the
        # rows are fetched before rowcount is read, so it counts them; SQLAlchemy's reads 0 with RETURNING.)
        assert first.one_or_none() == tuple(theirs.one()) == (when, False, ROW["doc"])
        assert first.rowcount == 1
        again = sqlite_direct.execute(conn, CLAIM, {"row_id": ids[0], "at": when})
        assert again.rowcount == 0 and again.one_or_none() is None and again.scalar_one_or_none() is None
        # A caller's key that names a literal's bind, or a column outside values(), wins as in SQLAlchemy.
        rename = update(things).where(things.c.id == bindparam("row_id")).values(name="fixed")
        sqlite_direct.execute(conn, rename, {"row_id": ids[0], "name": "caller", "n": 11})
        conn.execute(rename, {"row_id": ids[1], "name": "caller", "n": 11})
    assert stored(engine, ids[0]) == stored(engine, ids[1])
    assert stored(engine, ids[0])[0] == "caller" and stored(engine, ids[0])[4] == 11


def test_it_runs_in_the_callers_transaction(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        row_id = sqlite_direct.execute(conn, INSERT, ROW).scalar_one_or_none()
        # Visible to this transaction through SQLAlchemy, not to another connection before the commit.
        assert conn.execute(select(things.c.name).where(things.c.id == row_id)).scalar_one() == "a"
        other = sqlite3.connect(tmp_path / "direct.db")
        assert other.execute("SELECT count(*) FROM things").fetchone() == (0,)
        other.close()
        raise RuntimeError("roll back")
    with engine.connect() as conn:
        # Outside a transaction a write would commit at once (no autobegin here): refused.
        with pytest.raises(ValueError, match="inside engine.begin"):
            sqlite_direct.execute(conn, INSERT, ROW)
        assert conn.execute(select(things.c.id)).first() is None


def test_each_key_set_is_its_own_statement(engine: Engine) -> None:
    # One statement object, two sets of keys (a snapshot row without signals has fewer columns).
    with engine.begin() as conn:
        full = sqlite_direct.execute(conn, INSERT, ROW).scalar_one_or_none()
        short = sqlite_direct.execute(conn, INSERT, {"name": "b", "n": 1}).scalar_one_or_none()
    assert isinstance(full, int) and isinstance(short, int)
    assert stored(engine, full)[0] == "a" and stored(engine, full)[3] is not None
    assert stored(engine, short) == ("b", None, None, None, 1)


def test_executemany_and_an_empty_batch(engine: Engine) -> None:
    with engine.begin() as conn:
        result = sqlite_direct.execute(conn, insert(things), [{**ROW, "name": f"r{i}"} for i in range(5)])
        assert result.rowcount == 5
        with pytest.raises(ValueError, match="empty"):
            sqlite_direct.execute(conn, insert(things), [])
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


def test_driver_errors_are_sqlalchemys(engine: Engine) -> None:
    # As SQLAlchemy raises them, so callers' handling (503, retry) is the same: OperationalError (a lock held
    # past busy_timeout is one too), IntegrityError, and StatementError for a value a processor refuses.
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE things")
        with pytest.raises(sa_exc.OperationalError, match="no such table"):
            sqlite_direct.execute(conn, SELECT, {"id": 1})
    meta.create_all(engine)
    with engine.begin() as conn, pytest.raises(sa_exc.IntegrityError, match="NOT NULL"):
        sqlite_direct.execute(conn, insert(things), {**ROW, "name": None})
    with engine.begin() as conn, pytest.raises(sa_exc.StatementError, match="not JSON serializable"):
        sqlite_direct.execute(conn, insert(things), {**ROW, "doc": {"x": object()}})
    with engine.begin() as conn, pytest.raises(sa_exc.InvalidRequestError, match="row_id"):
        sqlite_direct.execute(conn, CLAIM, {"at": None})


def test_expanding_parameters_are_refused(engine: Engine) -> None:
    in_list = select(things.c.id).where(things.c.id.in_(bindparam("ids", expanding=True)))
    with engine.connect() as conn, pytest.raises(ValueError, match="expanding"):
        sqlite_direct.execute(conn, in_list, {"ids": [1, 2]})


def test_the_pipelines_statements_write_the_same_rows_both_ways(tmp_path: Path) -> None:
    """claim, lookup, index, finish and link, run once through this module and once through SQLAlchemy on
    two identical databases: every table ends up byte-identical, and every result is equal."""
    from receiver.db.migrate import ensure_schema
    from receiver.db.models import Event
    from receiver.worker.index import _existing_statement, _index_statements
    from receiver.worker.pipeline import _claim_statement, _finish_statement, _link_statement

    t0 = dt.datetime(2026, 11, 29, 2, 0, 0, 123456, tzinfo=dt.UTC)
    snapshot = {"job_id": "job-1", "captured_at_ms": 1796212805123, "kind": "sequence", "oss_endpoint": "oss-x",
                "oss_bucket": "b", "oss_object": "snapshot/job-1/1.jpg", "etag": "E1", "size": 300_000,
                "width": 1920, "height": 1080, "sha256": "ab" * 32, "create_timestamp_ms": None,
                "last_modified_ms": 1796212805000, "indexed_at": t0, "luma": 101.5, "luma_spread": 20.25,
                "dhash": -(1 << 62), "placeholder": {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj"}}

    def run(direct: bool) -> tuple[list[Any], dict[str, list[tuple[Any, ...]]]]:
        engine = make_engine(f"sqlite:///{tmp_path / ('direct' if direct else 'alchemy')}.db")
        ensure_schema(engine)

        def ex(conn: Any, stmt: Any, params: Any) -> Any:
            return sqlite_direct.execute(conn, stmt, params) if direct else conn.execute(stmt, params)

        out: list[Any] = []
        with engine.begin() as conn:
            conn.execute(insert(Event), [{"job_id": "job-1", "identity": f"i{i}", "oss_object": "snapshot/job-1/1.jpg",
                                          "received_at": t0, "updated_at": t0, "next_attempt_at": t0,
                                          "is_overlay": i == 1, "key_from_ice": i == 0} for i in range(2)])
        for event_id in (1, 2):
            with engine.begin() as conn:
                claim = {"event_id": event_id, "due": t0, "now": t0, "lease": t0 + dt.timedelta(seconds=60)}
                out.append(tuple(ex(conn, _claim_statement(), claim).one_or_none()))
                out.append(ex(conn, _claim_statement(), claim).one_or_none())  # claimed already: no row
        with engine.connect() as conn:
            lookup = {"job_id": "job-1", "bucket": "b", "key": "snapshot/job-1/1.jpg", "etag": "E1"}
            out.append(ex(conn, _existing_statement(True), lookup).scalar_one_or_none())
        insert_snapshot, insert_thumbnails = _index_statements("sqlite")
        with engine.begin() as conn:
            sid = ex(conn, insert_snapshot, snapshot).scalar_one_or_none()
            out.append(sid)
            out.append(ex(conn, insert_snapshot, snapshot).scalar_one_or_none())  # a conflict: no id
            ex(conn, insert_thumbnails, [{"snapshot_id": sid, "width": w, "height": w * 9 // 16, "format": "jpeg",
                                          "storage_key": f"ab/x-{w}.jpg", "size": w, "etag": f"t{w}"}
                                         for w in (320, 160)])
            done = {"event_id": 1, "claimed_attempts": 1, "new_status": "done", "error": None, "now": t0}
            out.append(ex(conn, _finish_statement(False), done).rowcount)
            out.append(ex(conn, _finish_statement(False), {**done, "claimed_attempts": 5}).rowcount)  # not ours
            retry = {**done, "event_id": 2, "new_status": "pending", "error": "E: later",
                     "next_attempt_at": t0 + dt.timedelta(seconds=5)}
            out.append(ex(conn, _finish_statement(True), retry).rowcount)
            ex(conn, _link_statement("sqlite"), [{"event_id": 1, "snapshot_id": sid}])
            ex(conn, _link_statement("sqlite"), [{"event_id": 1, "snapshot_id": sid}])  # kept once
        with engine.connect() as conn:
            out.append(ex(conn, _existing_statement(True), lookup).scalar_one_or_none())
            out.append(ex(conn, _existing_statement(False), lookup).scalar_one_or_none())
            raw = conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            tables = {t: raw.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()  # noqa: S608
                      for t in ("events", "snapshots", "thumbnails", "event_snapshots")}
            tables["statuses"] = raw.execute("SELECT status, attempts, last_error FROM events ORDER BY id").fetchall()
        engine.dispose()
        return out, tables

    direct_out, direct_tables = run(True)
    alchemy_out, alchemy_tables = run(False)
    assert direct_out == alchemy_out
    assert direct_tables == alchemy_tables
    # Not vacuous: both claims, the index, both finishes and the link happened.
    assert [r[0] for r in direct_out[0:4:2]] == [1, 2] and direct_out[1] is None
    assert direct_out[4] is None and direct_out[5] == 1 and direct_out[6] is None
    assert direct_out[7:10] == [1, 0, 1] and direct_out[10:] == [1, 1]
    assert direct_tables["statuses"] == [("done", 1, None), ("pending", 1, "E: later")]
    assert len(direct_tables["thumbnails"]) == 2 and len(direct_tables["event_snapshots"]) == 1
