"""On PostgreSQL, the done-transaction of one new object in two statements (see postgres_done_bypass)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table

from receiver.db import outbox
from receiver.db.engine import column_cast
from receiver.db.models import Event, EventSnapshot, EventStatus, Message, MessageType, Snapshot, Thumbnail, utcnow
from receiver.web.serialize import snapshot_json
from receiver.worker.index import IDENTITY_WINDOW_MS, announce_body, existing_on, existing_statement, identity_lock_key
from receiver.worker.types import Claimed, Prepared

log = logging.getLogger(__name__)

_SNAPSHOTS: Table = Snapshot.__table__  # type: ignore[assignment]
_THUMBNAILS: Table = Thumbnail.__table__  # type: ignore[assignment]
_MESSAGES: Table = Message.__table__  # type: ignore[assignment]
_THUMB_COLUMNS = ("width", "height", "format", "storage_key", "size", "etag")
_MESSAGE_COLUMNS = ("message_id", "type", "job_id", "account", "body", "created_at", "fanned_out")


@lru_cache(maxsize=2)
def _statements(dialect: Any) -> tuple[str, str, dict[str, Any]]:
    """The lock statement, the done statement, and the done statement's constant parameters."""
    snap_cols = [c.name for c in _SNAPSHOTS.c]
    snap_values = ", ".join(f"%(s_{c})s::{column_cast(_SNAPSHOTS, c, dialect)}" for c in snap_cols)
    thumb_arrays = ", ".join(f"%(t_{c})b::{column_cast(_THUMBNAILS, c, dialect)}[]" for c in _THUMB_COLUMNS)
    message_values = ", ".join(f"%(m_{c})s::{column_cast(_MESSAGES, c, dialect)}" for c in _MESSAGE_COLUMNS)
    # The look-again is index.existing_on's own statement, compiled, so the two cannot drift apart; its
    # parameters are job_id, bucket, key, etag, lo, hi, plus the constants it binds itself (its LIMIT).
    found = existing_statement(True, True).compile(dialect=dialect)
    constants = {k: v for k, v in found.params.items() if v is not None}
    lock = ("SELECT pg_advisory_xact_lock(%(key)s), "
            f"nextval(pg_get_serial_sequence('{_SNAPSHOTS.name}', 'id'))")
    done = f"""
WITH found AS (
    {found}
), ins AS (
    INSERT INTO {_SNAPSHOTS.name} ({", ".join(snap_cols)})
    SELECT {snap_values} WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT DO NOTHING
    RETURNING id, captured_at_ms
), thumbs AS (
    INSERT INTO {_THUMBNAILS.name} (snapshot_id, captured_at_ms, {", ".join(_THUMB_COLUMNS)})
    SELECT ins.id, ins.captured_at_ms, t.* FROM ins, unnest({thumb_arrays}) AS t
), message AS (
    INSERT INTO {_MESSAGES.name} ({", ".join(_MESSAGE_COLUMNS)})
    SELECT {message_values} FROM ins
), finish AS (
    UPDATE {Event.__tablename__} SET status = %(done)s, last_error = NULL, lease_until = NULL,
        updated_at = %(now)s
    WHERE id = %(event_id)s AND status = %(processing)s AND attempts = %(claimed_attempts)s
    RETURNING id
), link AS (
    INSERT INTO {EventSnapshot.__tablename__} (event_id, snapshot_id, captured_at_ms)
    SELECT finish.id, s.id, s.captured_at_ms
    FROM finish, (SELECT id, captured_at_ms FROM ins UNION ALL SELECT id, captured_at_ms FROM found) AS s
    ON CONFLICT DO NOTHING
)
SELECT (SELECT id FROM found), (SELECT id FROM ins), EXISTS (SELECT 1 FROM finish)"""
    return lock, done, constants


def _bound(table: Table, values: dict[str, Any], dialect: Any) -> dict[str, Any]:
    """``values`` as SQLAlchemy binds them for ``table`` (its types' bind processors: UTC datetimes, JSON, enums),
    None included (a JSON column binds None as JSON null); _ABSENT, a column an ORM insert would leave out, as
    SQL NULL."""
    processors = _processors(table, dialect)
    out = {}
    for name, value in values.items():
        process = processors[name]
        out[name] = None if value is _ABSENT else process(value) if process is not None else value
    return out


@lru_cache(maxsize=8)
def _processors(table: Table, dialect: Any) -> dict[str, Callable[[Any], Any] | None]:
    # Looked up once per table: asking each column's type per frame cost three times the rest of _bound.
    return {c.name: c.type._cached_bind_processor(dialect) for c in table.c}


_ABSENT = object()


def postgres_done_bypass(conn: Connection, ev: Claimed, p: Prepared, account: str,
                         widths: tuple[int, ...]) -> tuple[int, bool]:
    """BYPASS: index ``p`` (a fetched object) and mark ``ev`` done on ``conn`` (the caller's transaction) in two
    statements; returns the snapshot id and whether the caller must still link it to the event (only when the
    claim was still ours and the snapshot raced a writer that did not take the lock: the link names the winner).

    What it bypasses: pipeline.index_and_finish for one object on PostgreSQL: write_index (identity lock,
    look-again SELECT, snapshot INSERT, thumbnails INSERT, the snapshot.created message INSERT), then the
    event's done UPDATE and its link INSERT, seven statements through SQLAlchemy and psycopg. Here the lock goes
    with the snapshot id's ``nextval`` (the message body names the id, so the id is drawn first; a found or
    raced row leaves a gap in the sequence), and the rest is one statement of data-modifying CTEs, sent with
    ``exec_driver_sql``. The rules are index_and_finish's:

    - the identity lock is its own statement, first: the look-again (a new snapshot under READ COMMITTED) then
      sees a row committed by whoever held the lock before. All CTEs share one snapshot, so merging the lock
      into them would break that;
    - rows are facts whoever holds the claim: the snapshot, thumbnails and message are written either way; the
      link only if the done UPDATE found the claim still ours; only a row this statement inserted is announced;
    - a conflict on the identity constraint (a writer that did not take the lock) is resolved as write_index
      does, by reading the row that won, after the statement.

    Why: each round trip is client CPU, server CPU and, on a busy worker host, a wait for PostgreSQL to be
    scheduled; bench/stages.py and bench/scale.py have the figures (bench/RESULTS.md).
    When to remove it: when SQLAlchemy can send a transaction's statements in psycopg's pipeline mode, or when
    bench/scale.py shows index_and_finish within the noise of this (route PostgreSQL through it to measure).
    Then delete this module, the branch in pipeline._finish_done and tests/e2e/test_postgres_done.py's
    bypass tests; index.announce_body and index.identity_lock_key may fold back into their one caller.
    """
    assert p.snapshot is not None
    dialect = conn.dialect
    lock, done, constants = _statements(dialect)
    snap = p.snapshot
    at = snap["captured_at_ms"]
    sid = conn.exec_driver_sql(lock, {"key": identity_lock_key(snap)}).one()[1]
    if sid is None:  # the migrations make the id a serial column; a hand-altered table may not be
        raise RuntimeError(f"{_SNAPSHOTS.name}.id has no sequence (pg_get_serial_sequence): see migration 0007")
    now = utcnow()
    row = {c.name: snap.get(c.name, _ABSENT) for c in _SNAPSHOTS.c}
    row.update(id=sid, indexed_at=now)
    body = snapshot_json(announce_body(p, sid), widths=widths or None)
    message = {"message_id": outbox.new_message_id(), "type": MessageType.SNAPSHOT_CREATED,
               "job_id": snap["job_id"], "account": account, "created_at": now, "fanned_out": False,
               "body": outbox.message_body(MessageType.SNAPSHOT_CREATED, body, now)}
    params: dict[str, Any] = {f"s_{k}": v for k, v in _bound(_SNAPSHOTS, row, dialect).items()}
    params.update({f"m_{k}": v for k, v in _bound(_MESSAGES, message, dialect).items()})
    params.update({f"t_{c}": [t[c] for t in p.thumbnails] for c in _THUMB_COLUMNS})
    params.update(constants, job_id=snap["job_id"], bucket=snap["oss_bucket"], key=snap["oss_object"],
                  etag=snap["etag"], lo=at - IDENTITY_WINDOW_MS, hi=at + IDENTITY_WINDOW_MS, event_id=ev.id,
                  claimed_attempts=ev.attempts, done=EventStatus.DONE.value,
                  processing=EventStatus.PROCESSING.value, now=params["s_indexed_at"])
    found, inserted, finished = conn.exec_driver_sql(done, params).one()
    if not finished:
        log.warning("event %s: lost its claim before finishing; leaving it to the new owner", ev.id)
    if inserted is not None:
        conn.info[outbox.WROTE] = True
        return inserted, False
    if found is not None:
        return found, False
    # The identity constraint met a row of this very capture time that the look-again could not see.
    raced = existing_on(conn, snap["job_id"], snap["oss_bucket"], snap["oss_object"], snap["etag"], at)
    if raced is None:  # the conflicting row must be visible to this transaction
        raise RuntimeError(f"snapshot {snap['oss_object']!r} conflicted but cannot be found")
    return raced[0], finished
