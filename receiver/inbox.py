"""Recording events in the inbox table, deduplicated by (job, identity) even under concurrent delivery.

The callback path is the hot path: statements are built once (SQLAlchemy caches their compiled form), run
on a Core connection, and concurrent requests share one transaction through a small group commit, so a
burst of callbacks costs one SQLite write lock and one commit instead of one each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from .callback_parse import EventItem
from .models import Event, utcnow

_table = cast(Table, Event.__table__)
_COLUMNS = ("job_id", "identity", "origin", "status", "attempts", "oss_object", "oss_bucket", "oss_endpoint",
            "create_timestamp_ms", "is_overlay", "raw_body", "received_at", "updated_at", "next_attempt_at")


@dataclass(frozen=True)
class Recorded:
    event_ids: list[int]  # in item order, existing ids for duplicates
    new_ids: list[int]


@lru_cache(maxsize=4)
def _statements(dialect: str) -> tuple[Executable, Executable]:
    insert: Callable[..., Any]
    if dialect == "postgresql":
        insert = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    ins = (
        insert(_table)
        .values({c: bindparam(c) for c in _COLUMNS})
        .on_conflict_do_nothing(index_elements=["job_id", "identity"])
        .returning(_table.c.id)
    )
    existing = select(_table.c.id).where(
        _table.c.job_id == bindparam("job_id"), _table.c.identity == bindparam("identity")
    )
    return ins, existing


def _params(item: EventItem, origin: str, now: Any) -> dict[str, Any]:
    return {
        "job_id": item.job_id, "identity": item.identity, "origin": origin, "status": "pending", "attempts": 0,
        "oss_object": item.oss_object, "oss_bucket": item.oss_bucket, "oss_endpoint": item.oss_endpoint,
        "create_timestamp_ms": item.create_timestamp_ms, "is_overlay": item.is_overlay,
        "raw_body": item.raw[:65536], "received_at": now, "updated_at": now, "next_attempt_at": now,
    }


def record_events(db: Session | Connection, items: list[EventItem], origin: str = "callback") -> Recorded:
    """Insert what is new; ON CONFLICT DO NOTHING makes a concurrent duplicate a no-op, not an error."""
    conn = db.connection() if isinstance(db, Session) else db
    ins, existing = _statements(conn.dialect.name)
    now = utcnow()
    ids: list[int] = []
    new: list[int] = []
    for item in items:
        new_id = conn.execute(ins, _params(item, origin, now)).scalar_one_or_none()
        if new_id is None:
            ids.append(conn.execute(existing, {"job_id": item.job_id, "identity": item.identity}).scalar_one())
        else:
            ids.append(new_id)
            new.append(new_id)
    return Recorded(event_ids=ids, new_ids=new)


@dataclass
class _Entry:
    items: list[EventItem]
    origin: str
    result: Recorded | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommitter:
    """Leader-based group commit: whoever finds no write in progress writes everything queued so far."""

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._queue: list[_Entry] = []
        self._writing = False

    def record(self, items: list[EventItem], origin: str = "callback") -> Recorded:
        entry = _Entry(items, origin)
        with self._cv:
            self._queue.append(entry)
        while True:
            with self._cv:
                while self._writing and not entry.done:
                    self._cv.wait()
                if entry.done:
                    return self._unwrap(entry)
                self._writing = True
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                self._write(batch)
            finally:
                with self._cv:
                    self._writing = False
                    self._cv.notify_all()

    def _write(self, batch: list[_Entry]) -> None:
        try:
            with self.engine.begin() as conn:
                results = [record_events(conn, e.items, e.origin) for e in batch]
        except Exception as e:
            if len(batch) == 1:
                batch[0].error, batch[0].done = e, True
                return
            # One bad entry must not fail its neighbours: fall back to one transaction each.
            for entry in batch:
                self._write([entry])
            return
        for entry, result in zip(batch, results, strict=True):
            entry.result, entry.done = result, True

    @staticmethod
    def _unwrap(entry: _Entry) -> Recorded:
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        return entry.result
