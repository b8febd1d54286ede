"""The database layer under the worker: the per-frame statements (built once, run through SQLAlchemy) store
and read back what they are given, and SQLite's write locking fails as SQLAlchemy fails.
(On PostgreSQL the same statements run in the pipeline tests re-run by test_postgres.py.)"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy import exc as sa_exc

from receiver.db.engine import make_engine, reader
from receiver.db.migrate import ensure_schema
from receiver.db.models import Event, Snapshot
from receiver.worker.index import IDENTITY_WINDOW_MS, _index_statements, existing_statement, write_index
from receiver.worker.pipeline import _claim_statement, _finish_statement, _link_statement
from receiver.worker.types import Claimed, Prepared

ZONE = dt.timezone(dt.timedelta(hours=8))  # a non-UTC zone: stored as UTC, read back aware
T0 = dt.datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=ZONE)
SNAPSHOT: dict[str, Any] = {
    "job_id": "job-1", "captured_at_ms": 1796212805123, "kind": "sequence", "oss_endpoint": "oss-x",
    "oss_bucket": "b", "oss_object": "snapshot/job-1/1.jpg", "etag": "E1", "size": 300_000, "width": 1920,
    "height": 1080, "sha256": "ab" * 32, "create_timestamp_ms": None, "last_modified_ms": 1796212805000,
    "luma": 101.5, "luma_spread": 20.25, "dhash": -(1 << 62),
    "placeholder": {"blurhash": "LEHV6nWB2yk8pyo0adR*.7kCMdnj"},
}
LOOKUP = {"job_id": "job-1", "bucket": "b", "key": "snapshot/job-1/1.jpg", "etag": "E1"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'db.db'}", busy_timeout_s=0.2)
    ensure_schema(e)
    with e.begin() as conn:
        conn.execute(insert(Event), [{"job_id": "job-1", "identity": f"i{i}", "oss_object": "snapshot/job-1/1.jpg",
                                      "received_at": T0, "updated_at": T0, "next_attempt_at": T0,
                                      "is_overlay": i == 1, "key_from_ice": i == 0} for i in range(2)])
    yield e
    e.dispose()


def test_the_pipelines_statements_round_trip_values(engine: Engine) -> None:
    """claim, lookup, index, finish and link, on the statements the worker builds once."""
    claim = {"event_id": 1, "due": T0, "now": T0, "lease": T0 + dt.timedelta(seconds=60)}
    with engine.begin() as conn:
        row = conn.execute(_claim_statement(conn.dialect.name), claim).one_or_none()
        assert row is not None
        ev = Claimed(*row)
        assert conn.execute(_claim_statement(conn.dialect.name), claim).one_or_none() is None  # claimed already: no row
    assert (ev.id, ev.attempts, ev.job_id, ev.key_from_ice, ev.is_overlay) == (1, 1, "job-1", True, False)
    # An aware datetime in another zone is stored as UTC and read back aware, the same instant.
    assert ev.received_at == T0 and ev.received_at.tzinfo == dt.UTC

    with engine.connect() as conn:
        assert conn.execute(existing_statement(True), LOOKUP).scalar_one_or_none() is None
    insert_snapshot, insert_thumbnails = _index_statements("sqlite")
    thumbs = [{"width": w, "height": w * 9 // 16, "format": "jpeg", "storage_key": f"ab/x-{w}.jpg", "size": w,
               "etag": f"t{w}"} for w in (320, 160)]
    with engine.begin() as conn:
        sid = write_index(conn, Prepared(None, SNAPSHOT, tuple(thumbs)))
        assert conn.execute(insert_snapshot, SNAPSHOT).scalar_one_or_none() is None  # a conflict: no id
        # Raced by another writer: the existing row's id, and no second set of thumbnails.
        assert write_index(conn, Prepared(None, SNAPSHOT, tuple(thumbs))) == sid
        done = {"event_id": 1, "claimed_attempts": 1, "new_status": "done", "error": None, "now": T0}
        assert conn.execute(_finish_statement(False), {**done, "claimed_attempts": 5}).rowcount == 0  # not ours
        assert conn.execute(_finish_statement(False), done).rowcount == 1
        at = SNAPSHOT["captured_at_ms"]
        link = {"event_id": 1, "snapshot_id": sid, "lo": at - 1, "hi": at + 1}
        conn.execute(_link_statement("sqlite"), [link])
        conn.execute(_link_statement("sqlite"), [link])  # kept once
    with engine.connect() as conn:
        assert conn.execute(existing_statement(True), LOOKUP).scalar_one_or_none() == sid
        assert conn.execute(existing_statement(False), LOOKUP).scalar_one_or_none() == sid
        snap = conn.execute(select(Snapshot).where(Snapshot.id == sid)).one()
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        assert raw.execute("SELECT count(*) FROM thumbnails").fetchone() == (2,)
        assert raw.execute("SELECT count(*) FROM event_snapshots").fetchone() == (1,)
        assert raw.execute("SELECT status, attempts FROM events ORDER BY id").fetchall() == [
            ("done", 1), ("pending", 0)]
    # JSON, floats and a 64-bit signed hash come back as given; indexed_at came from the column default.
    assert snap.placeholder == SNAPSHOT["placeholder"] and snap.dhash == SNAPSHOT["dhash"]
    assert snap.luma == SNAPSHOT["luma"] and snap.indexed_at.tzinfo == dt.UTC


def test_an_object_without_thumbnails_writes_only_its_row(engine: Engine) -> None:
    # An empty parameter list must not reach executemany.
    with engine.begin() as conn:
        sid = write_index(conn, Prepared(None, SNAPSHOT, ()))
    with engine.connect() as conn:
        assert conn.execute(existing_statement(False), LOOKUP).scalar_one_or_none() == sid


def test_a_write_lock_held_past_busy_timeout_is_an_operational_error(engine: Engine, tmp_path: Path) -> None:
    """The BEGIN IMMEDIATE sent on the driver connection fails as SQLAlchemy's own would (a 503, a retry);
    a reader's plain BEGIN does not wait for the writer."""
    other = sqlite3.connect(tmp_path / "db.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sa_exc.OperationalError, match="locked"), engine.begin() as conn:
            conn.execute(select(Event.id)).all()
        with reader(engine).begin() as conn:
            assert len(conn.execute(select(Event.id)).all()) == 2
    finally:
        other.rollback()
        other.close()
    with engine.begin() as conn:  # the failed BEGIN left the pooled connection usable
        assert conn.execute(_finish_statement(False), {"event_id": 2, "claimed_attempts": 0, "new_status": "failed",
                                                       "error": None, "now": T0}).rowcount == 0


def test_one_content_with_two_capture_times_is_indexed_and_announced_once(engine: Engine) -> None:
    """The identity constraint carries captured_at_ms (day partitions), so it no longer catches the same
    content reported with another capture time (a callback's CreateTimestamp vs the listing's time): the
    look-up inside the writing transaction does, on SQLite as on PostgreSQL."""
    with engine.begin() as conn:
        sid = write_index(conn, Prepared(None, SNAPSHOT, ()))
    later = {**SNAPSHOT, "captured_at_ms": SNAPSHOT["captured_at_ms"] + 500}
    with engine.begin() as conn:
        assert write_index(conn, Prepared(None, later, ())) == sid
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        assert raw.execute("SELECT count(*) FROM snapshots").fetchone() == (1,)
        assert raw.execute("SELECT count(*) FROM messages WHERE type = 'snapshot.created'").fetchone() == (1,)


def test_the_identity_look_up_reaches_a_day_either_side_of_the_capture_time(engine: Engine) -> None:
    """Bounded so PostgreSQL reads a few day partitions; two reports of one content differ by seconds."""
    with engine.begin() as conn:
        sid = write_index(conn, Prepared(None, SNAPSHOT, ()))
    hours_later = {**SNAPSHOT, "captured_at_ms": SNAPSHOT["captured_at_ms"] + IDENTITY_WINDOW_MS - 1}
    with engine.begin() as conn:
        assert write_index(conn, Prepared(None, hours_later, ())) == sid
