"""BYPASS: the done-transaction of one new object on PostgreSQL in two statements instead of seven.

What it bypasses: pipeline._finish_done's general path for the common case (one object, fetched, PostgreSQL):
``write_index`` (identity lock, look-again SELECT, snapshot INSERT, thumbnails INSERT, the snapshot.created
message INSERT), then the event's done UPDATE and its link INSERT, each a round trip through SQLAlchemy and
psycopg. Here the lock goes with the snapshot id's ``nextval`` (the message body names the id, so the id is
taken first), and everything else is one statement of data-modifying CTEs, sent with ``exec_driver_sql``:
BEGIN, 2 statements, COMMIT instead of BEGIN, 7, COMMIT.

Why: on a loaded worker host each round trip is a wait for PostgreSQL to be scheduled as well as client CPU;
bench/RESULTS.md (the scale-out shape) has the figures. The rules are the general path's:

- the identity lock is taken in its own statement first, so the look-again SELECT (a new snapshot, READ
  COMMITTED) sees a row committed by whoever held the lock before;
- rows are facts whoever holds the claim: the snapshot, thumbnails and message are written either way; the
  link only if the done UPDATE found the claim still ours;
- only a row this statement inserted is announced;
- a conflict on the identity constraint (a writer that did not take the lock) is resolved as write_index does,
  by reading the row that won, after the statement.

When to remove it: when SQLAlchemy can send a transaction's statements in psycopg's pipeline mode, or when
bench/scale.py shows the general path within the noise of this one (route PostgreSQL through it to measure).
tests/e2e/test_postgres.py checks that both write the same rows.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table

from receiver.db import outbox
from receiver.db.models import Event, EventSnapshot, EventStatus, Message, MessageType, Snapshot, Thumbnail, utcnow
from receiver.web.serialize import snapshot_json
from receiver.worker.index import IDENTITY_WINDOW_MS, announce_body, existing_on, identity_lock_key
from receiver.worker.types import Claimed, Prepared

log = logging.getLogger(__name__)

_SNAPSHOTS: Table = Snapshot.__table__  # type: ignore[assignment]
_THUMBNAILS: Table = Thumbnail.__table__  # type: ignore[assignment]
_MESSAGES: Table = Message.__table__  # type: ignore[assignment]
_THUMB_COLUMNS = ("width", "height", "format", "storage_key", "size", "etag")
_MESSAGE_COLUMNS = ("message_id", "type", "job_id", "account", "body", "created_at", "fanned_out")


def _cast(table: Table, column: str, dialect: Any) -> str:
    # The table's own column type without a length: a cast to VARCHAR(n) would cut a longer value silently,
    # where the column itself refuses it (as intake/inbox.py's arrays).
    return re.sub(r"\(\d+\)", "", table.c[column].type.compile(dialect=dialect))


@lru_cache(maxsize=2)
def _statements(dialect: Any) -> tuple[str, str]:
    snap_cols = [c.name for c in _SNAPSHOTS.c]
    snap_values = ", ".join(f"%(s_{c})s::{_cast(_SNAPSHOTS, c, dialect)}" for c in snap_cols)
    thumb_arrays = ", ".join(f"%(t_{c})b::{_cast(_THUMBNAILS, c, dialect)}[]" for c in _THUMB_COLUMNS)
    message_values = ", ".join(f"%(m_{c})s::{_cast(_MESSAGES, c, dialect)}" for c in _MESSAGE_COLUMNS)
    window = "captured_at_ms BETWEEN %(lo)s AND %(hi)s"
    lock = ("SELECT pg_advisory_xact_lock(%(key)s), "
            f"nextval(pg_get_serial_sequence('{_SNAPSHOTS.name}', 'id'))")
    done = f"""
WITH found AS (
    SELECT id, captured_at_ms FROM {_SNAPSHOTS.name}
    WHERE job_id = %(s_job_id)s AND oss_bucket = %(s_oss_bucket)s AND oss_object = %(s_oss_object)s
      AND etag = %(s_etag)s AND {window}
    LIMIT 1
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
    return lock, done


def _bound(table: Table, values: dict[str, Any], dialect: Any) -> dict[str, Any]:
    """``values`` as SQLAlchemy would bind them for ``table`` (its types' bind processors: UTC datetimes, JSON)."""
    out = {}
    for name, value in values.items():
        process = table.c[name].type._cached_bind_processor(dialect)
        out[name] = process(value) if process is not None and value is not None else value
    return out


def postgres_done_bypass(conn: Connection, ev: Claimed, p: Prepared, account: str,
                         widths: tuple[int, ...]) -> tuple[int, bool]:
    """Index ``p`` (a fetched object) and mark ``ev`` done on ``conn`` (the caller's transaction).

    Returns the snapshot id and whether the caller must still link it to the event: only when the claim was
    still ours and the snapshot raced a writer that did not take the lock (the link then names the row that won).
    """
    assert p.snapshot is not None
    dialect = conn.dialect
    lock, done = _statements(dialect)
    snap = p.snapshot
    at = snap["captured_at_ms"]
    sid = conn.exec_driver_sql(lock, {"key": identity_lock_key(snap)}).one()[1]
    now = utcnow()
    row = {c.name: snap.get(c.name) for c in _SNAPSHOTS.c}
    row.update(id=sid, indexed_at=now)
    body = snapshot_json(announce_body(p, sid), widths=widths or None)
    message = {"message_id": outbox.new_message_id(), "type": MessageType.SNAPSHOT_CREATED,
               "job_id": snap["job_id"], "account": account, "created_at": now, "fanned_out": False,
               "body": outbox.message_body(MessageType.SNAPSHOT_CREATED, body, now)}
    params: dict[str, Any] = {f"s_{k}": v for k, v in _bound(_SNAPSHOTS, row, dialect).items()}
    params.update({f"m_{k}": v for k, v in _bound(_MESSAGES, message, dialect).items()})
    params.update({f"t_{c}": [t[c] for t in p.thumbnails] for c in _THUMB_COLUMNS})
    params.update(lo=at - IDENTITY_WINDOW_MS, hi=at + IDENTITY_WINDOW_MS, event_id=ev.id,
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
