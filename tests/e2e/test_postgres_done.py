"""The worker's round trips on PostgreSQL. The done-transaction (worker/index_postgres.py, a BYPASS of the
general path's statements) writes the same rows as the general path, links a found row instead of writing a
second one, keeps the rows but writes no link when the claim is lost, and links the row that won a race on the
identity constraint. The claim carries the pre-fetch probe of the callback's own object."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import pytest
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH, MAX_CACHED_STATEMENT_PARAMS
from sqlalchemy import Connection, delete, event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from receiver.db import outbox
from receiver.db.models import Event, EventSnapshot, EventStatus, Message, Snapshot, Thumbnail, utcnow
from receiver.intake.inbox import record_events
from receiver.intake.parse import parse_callback
from receiver.services import Services
from receiver.worker import pipeline
from receiver.worker.index import identity_lock_key
from receiver.worker.index_postgres import postgres_done_bypass
from receiver.worker.types import Claimed, Prepared
from tests.e2e.test_postgres import T0, settings  # noqa: F401
from tests.integration.test_pipeline import send, the_event
from tests.support.builders import BUCKET, callback_body, put_snapshot
from tests.support.pg_redis import pg_head_url, pg_server  # noqa: F401

WIDTHS = (320, 160)


def _claimed(svc: Services, n: int) -> list[Claimed]:
    items = [item for i in range(n) for item in parse_callback(callback_body(f"snapshot/job-0001/{T0 + i}.jpg",
                                                                             T0 + i))[0]]
    with svc.engine.begin() as conn:
        ids = record_events(conn, items).new_ids
    claimed = [pipeline._claim(svc, i) for i in ids]
    assert all(c is not None for c in claimed)
    return [c for c in claimed if c is not None]


def _prepared(at: int = T0, key: str = "snapshot/job-0001/a.jpg", **over: Any) -> Prepared:
    snap = {"job_id": "job-0001", "captured_at_ms": at, "kind": "sequence",
            "oss_endpoint": "oss-cn-shanghai.aliyuncs.com", "oss_bucket": "testbucket", "oss_object": key,
            "etag": "E" * 32, "size": 285_000, "width": 1920, "height": 1080, "sha256": "5" * 64,
            "create_timestamp_ms": at - 40, "last_modified_ms": at + 7, "luma": 121.5, "luma_spread": 33.25,
            "dhash": -(2 ** 62) + 3, "placeholder": {"blurhash": "LKO2?U%2Tw=w]~RBVZRi};RPxuwH"}, **over}
    thumbs = tuple({"width": w, "height": w * 9 // 16, "format": "jpeg", "storage_key": f"ab/20261202/x-{w}.jpg",
                    "size": 9000 + w, "etag": f"{w:032d}"} for w in WIDTHS)
    return Prepared(None, snap, thumbs)


def _stored(conn: Connection, event_id: int) -> dict[str, Any]:
    """Every row the done-transaction of ``event_id`` writes, without the columns that differ by when or by whom
    they were written (the event's id and its callback, clocks, random message ids)."""
    def rows(table: Any, drop: tuple[str, ...], *where: Any) -> list[dict[str, Any]]:
        return sorted(({k: v for k, v in r.items() if k not in drop}
                       for r in conn.execute(select(table).where(*where)).mappings()), key=repr)

    messages = rows(Message.__table__, ("id", "message_id", "created_at"))
    for m in messages:
        m["body"] = {**json.loads(m["body"]), "timestamp": None}
    return {"snapshots": rows(Snapshot.__table__, ("indexed_at",)),
            "thumbnails": rows(Thumbnail.__table__, ()),
            "messages": messages,
            "links": rows(EventSnapshot.__table__, ("event_id",)),
            "events": rows(Event.__table__, ("id", "identity", "oss_object", "create_timestamp_ms", "raw_body",
                                             "received_at", "updated_at", "next_attempt_at"), Event.id == event_id)}


def _statements(svc: Services, thread: int | None = None, whole: bool = False) -> tuple[list[str], Any]:
    """The first word of each statement sent on either engine (by ``thread`` when given; ``whole``: the whole
    statement), and how to stop listening."""
    sent: list[str] = []

    def seen(conn, cursor, statement, parameters, *_):  # type: ignore[no-untyped-def]
        if thread is None or threading.get_ident() == thread:
            sent.append(statement if whole else statement.split(None, 1)[0].upper())

    engines = {svc.engine, svc.read_engine}
    for e in engines:
        event.listen(e, "before_cursor_execute", seen)

    def stop() -> None:
        for e in engines:
            event.remove(e, "before_cursor_execute", seen)

    return sent, stop


def test_the_bypass_writes_what_the_general_path_writes_in_two_statements(svc: Services) -> None:
    first, second = _claimed(svc, 2)
    p = _prepared()
    with svc.engine.begin() as conn:
        [sid] = pipeline.index_and_finish(conn, first, [p], WIDTHS)
    with svc.engine.connect() as conn:
        general = _stored(conn, first.id)
    # The same snapshot id again for the bypass, so the two message bodies can be compared whole.
    with svc.engine.begin() as conn:
        for table in (Snapshot, Thumbnail, Message, EventSnapshot):
            conn.execute(delete(table))
        conn.execute(text("SELECT setval(pg_get_serial_sequence('snapshots', 'id'), :v, false)"), {"v": sid})
    sent, stop = _statements(svc, threading.get_ident())
    try:
        assert pipeline._finish_done(svc, second, [p]) == (sid,)
    finally:
        stop()
    assert sent == ["SELECT", "WITH"]  # the identity lock with the new id, then the rest in one statement
    with svc.engine.connect() as conn:
        bypass = _stored(conn, second.id)
    assert bypass == general
    assert general["events"][0]["status"] == EventStatus.DONE and general["events"][0]["lease_until"] is None
    assert len(bypass["thumbnails"]) == 2 and len(bypass["messages"]) == 1 and len(bypass["links"]) == 1
    assert bypass["messages"][0]["body"]["data"]["id"] == str(sid)
    with svc.engine.connect() as conn:  # the clocks the comparison left out: now, in UTC
        written = [conn.execute(select(Snapshot.indexed_at)).scalar_one(),
                   conn.execute(select(Message.created_at)).scalar_one(),
                   conn.execute(select(Event.updated_at).where(Event.id == second.id)).scalar_one()]
    assert all(t.tzinfo is not None and abs(t - utcnow()) < dt.timedelta(minutes=1) for t in written)


def test_a_row_already_there_is_linked_not_written_again(svc: Services) -> None:
    first, second = _claimed(svc, 2)
    with svc.engine.begin() as conn:
        sid, must_link = postgres_done_bypass(conn, first, _prepared(), "default", WIDTHS)
        assert not must_link and conn.info.get(outbox.WROTE) is True  # a live feed in this process wakes
    # The same content reported with a capture time a few seconds off (another source of the time).
    with svc.engine.begin() as conn:
        conn.info.pop(outbox.WROTE, None)  # (the flag lives on the pooled connection; a live feed clears it)
        assert postgres_done_bypass(conn, second, _prepared(at=T0 + 4000), "default", WIDTHS) == (sid, False)
        assert outbox.WROTE not in conn.info  # nothing new to announce
    with svc.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Snapshot)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(Message)).scalar_one() == 1
        assert set(conn.execute(select(EventSnapshot.event_id, EventSnapshot.snapshot_id,
                                       EventSnapshot.captured_at_ms))) == {(first.id, sid, T0), (second.id, sid, T0)}
        assert set(conn.execute(select(Event.status))) == {(EventStatus.DONE,)}


def test_a_row_committed_by_the_previous_holder_of_the_lock_is_found(svc: Services) -> None:
    """The identity lock is a statement of its own before the look-again: a writer that held the lock and
    committed meanwhile (another capture time for the same content, so no constraint conflict) is seen."""
    [ev] = _claimed(svc, 1)
    p = _prepared()
    assert p.snapshot is not None
    result: list[tuple[int, bool]] = []

    def finish() -> None:
        with svc.engine.begin() as conn:
            result.append(postgres_done_bypass(conn, ev, p, "default", WIDTHS))

    with svc.engine.connect() as other:
        tx = other.begin()
        other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": identity_lock_key(p.snapshot)})
        theirs = other.execute(insert(Snapshot).values(**{**p.snapshot, "captured_at_ms": T0 + 4000},
                                                        indexed_at=utcnow()).returning(Snapshot.id)).scalar_one()
        worker = threading.Thread(target=finish)
        worker.start()
        _wait_for(svc, "advisory")
        tx.commit()
    worker.join(timeout=20)
    assert result == [(theirs, False)]
    with svc.engine.connect() as conn:
        assert conn.execute(select(Snapshot.id)).scalars().all() == [theirs]
        assert conn.execute(select(EventSnapshot.snapshot_id, EventSnapshot.captured_at_ms)).all() == [
            (theirs, T0 + 4000)]


def _wait_for(svc: Services, locktype: str) -> None:
    """Until some session waits for a lock of this type (pg_stat_activity may still show the statement
    before; the lock table tells what waits)."""
    deadline = time.monotonic() + 20
    with svc.engine.connect() as watch:
        while not watch.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = :t"),
                                {"t": locktype}).scalar_one():
            if time.monotonic() > deadline:
                pytest.fail(f"nothing ever waited on a {locktype} lock")
            time.sleep(0.02)


def test_a_lost_claim_keeps_the_rows_but_writes_no_link_and_leaves_the_event(svc: Services) -> None:
    [ev] = _claimed(svc, 1)
    with svc.engine.begin() as conn:  # another worker reclaimed it after our lease ran out
        conn.execute(update(Event).where(Event.id == ev.id).values(attempts=Event.attempts + 1))
    sent, stop = _statements(svc, threading.get_ident())
    try:
        [sid] = pipeline._finish_done(svc, ev, [_prepared()])
    finally:
        stop()
    assert sent == ["SELECT", "WITH"]
    with svc.engine.connect() as conn:
        assert conn.execute(select(Snapshot.id)).scalars().all() == [sid]
        assert conn.execute(select(func.count()).select_from(Thumbnail)).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(Message)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(EventSnapshot)).scalar_one() == 0
        assert conn.execute(select(Event.status, Event.attempts)).one() == (EventStatus.PROCESSING, 2)


def test_a_writer_without_the_lock_that_wins_the_identity_is_linked_after_the_statement(svc: Services) -> None:
    """The look-again cannot see an uncommitted row; the INSERT then waits on it, finds the conflict once it is
    committed, and the event is linked to that row by a statement of its own."""
    [ev] = _claimed(svc, 1)
    p = _prepared()
    assert p.snapshot is not None
    result: list[tuple[int, ...]] = []
    sent: list[str] = []

    def finish() -> None:
        nonlocal sent
        sent, stop = _statements(svc, threading.get_ident())
        try:
            result.append(pipeline._finish_done(svc, ev, [p]))
        finally:
            stop()

    with svc.engine.connect() as other:
        tx = other.begin()
        theirs = other.execute(insert(Snapshot).values(**p.snapshot, indexed_at=utcnow()).returning(Snapshot.id)
                               ).scalar_one()
        worker = threading.Thread(target=finish)
        worker.start()
        _wait_for(svc, "transactionid")
        tx.commit()
    worker.join(timeout=20)
    assert result == [(theirs,)]
    assert sent == ["SELECT", "WITH", "SELECT", "INSERT"]  # after the statement: the row that won, its link
    with svc.engine.connect() as conn:
        assert conn.execute(select(Snapshot.id)).scalars().all() == [theirs]
        assert conn.execute(select(func.count()).select_from(Thumbnail)).scalar_one() == 0  # theirs to write
        assert conn.execute(select(func.count()).select_from(Message)).scalar_one() == 0
        assert conn.execute(select(EventSnapshot.event_id, EventSnapshot.snapshot_id)).all() == [(ev.id, theirs)]
        assert conn.execute(select(Event.status)).scalar_one() == EventStatus.DONE


def test_a_value_too_long_for_its_column_is_refused_and_nothing_is_written(svc: Services) -> None:
    [ev] = _claimed(svc, 1)
    with pytest.raises(DBAPIError, match="too long"), svc.engine.begin() as conn:  # the casts carry no length
        postgres_done_bypass(conn, ev, _prepared(etag="e" * 129), "default", WIDTHS)
    with svc.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Snapshot)).scalar_one() == 0
        assert conn.execute(select(Event.status)).scalar_one() == EventStatus.PROCESSING


def test_a_callback_for_a_new_object_costs_the_claim_and_the_two_statements(client, svc: Services, fake_ice,
                                                                            fake_oss, frame) -> None:
    """No SELECT of its own for the pre-fetch probe: the claim's RETURNING answered it (nothing there)."""
    first = send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0))
    assert pipeline.process_event(svc, int(first)).status == "done"  # the job's row, connections: warm
    second = send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0 + 5000, frame), T0 + 5000))
    sent, stop = _statements(svc, threading.get_ident())
    try:
        assert pipeline.process_event(svc, int(second)).status == "done"
    finally:
        stop()
    assert sent == ["UPDATE", "SELECT", "WITH"]  # the claim (and probe), the identity lock, the rest


def test_a_new_frames_statements_stay_within_psycopgs_parse_cache(client, svc: Services, fake_ice, fake_oss,
                                                                 frame) -> None:
    """psycopg re-parses, with a regular expression on every execution, a statement longer than 4,096 bytes or
    given more than 50 parameters. The done statement passes one parameter per snapshot column, so a few more
    columns would push it past that without any test noticing the cost."""
    first = send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0))
    assert pipeline.process_event(svc, int(first)).status == "done"
    second = send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0 + 5000, frame), T0 + 5000))
    sent: list[tuple[str, int]] = []
    me = threading.get_ident()

    def seen(conn, cursor, statement, parameters, *_):  # type: ignore[no-untyped-def]
        if threading.get_ident() == me:
            sent.append((statement, len(parameters)))

    event.listen(svc.engine, "before_cursor_execute", seen)
    try:
        assert pipeline.process_event(svc, int(second)).status == "done"
    finally:
        event.remove(svc.engine, "before_cursor_execute", seen)
    assert [s.split(None, 1)[0].upper() for s, _ in sent] == ["UPDATE", "SELECT", "WITH"]
    too_big = [(s[:40], len(s.encode()), n) for s, n in sent
               if len(s.encode()) > MAX_CACHED_STATEMENT_LENGTH or n > MAX_CACHED_STATEMENT_PARAMS]
    assert too_big == []


def test_an_indexed_object_is_found_by_the_claim_and_never_fetched(client, svc: Services, fake_ice, fake_oss,
                                                                   frame) -> None:
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    first = send(client, callback_body(key, T0))
    assert pipeline.process_event(svc, int(first)).status == "done"
    [sid] = the_event(svc, first).snapshot_ids
    gets = len([r for r in fake_oss.fetched(BUCKET, key) if r["method"] == "GET"])
    # The same object reported again with another callback time (a new event, hours off: within the window).
    again = send(client, callback_body(key, T0 + 3 * 3_600_000))
    sent, stop = _statements(svc, threading.get_ident(), whole=True)
    try:
        assert pipeline.process_event(svc, int(again)).status == "done"
    finally:
        stop()
    assert len([r for r in fake_oss.fetched(BUCKET, key) if r["method"] == "GET"]) == gets
    assert the_event(svc, again).snapshot_ids == [sid]
    assert not [s for s in sent if s.lstrip().upper().startswith("SELECT")]  # no probe of its own
    assert "FROM snapshots" in sent[0]  # the claim asked


def test_an_id_column_without_its_sequence_is_named_in_the_error(svc: Services) -> None:
    """A table altered by hand so that snapshots.id no longer owns its sequence: a clear error, nothing written."""
    [ev] = _claimed(svc, 1)
    with svc.engine.begin() as conn:
        seq = conn.execute(text("SELECT pg_get_serial_sequence('snapshots', 'id')")).scalar_one()
        conn.execute(text(f"ALTER SEQUENCE {seq} OWNED BY NONE"))
    with pytest.raises(RuntimeError, match="snapshots.id has no sequence"):
        pipeline._finish_done(svc, ev, [_prepared()])
    with svc.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Snapshot)).scalar_one() == 0
        assert conn.execute(select(Event.status)).scalar_one() == EventStatus.PROCESSING
