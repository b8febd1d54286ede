"""Leases: one holder at a time for loops that should run once per deployment, not once per process.

Every `serve` and every `receiver worker` runs the maintenance loop (reconcile, prune). Without a lease, N
workers made N times the ListLiveSnapshotFiles calls and N concurrent prunes: harmless (events are
deduplicated, deletes idempotent) but wasteful, and ICE throttles. A lease is a row: the holder renews it
on every pass; when it stops (crash, scale-down), another process takes over once it expires.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from typing import Any

from sqlalchemy import delete, func, or_, update

from receiver.db.engine import insert_for
from receiver.db.models import Lease, utcnow
from receiver.services import Services


def holder_name() -> str:
    """This process, recognisably: host, pid and a random part (pids repeat across containers)."""
    return f"{socket.gethostname()[:120]}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def hold(svc: Services, name: str, holder: str, seconds: float, now: dt.datetime | None = None) -> bool:
    """Take or renew lease ``name`` for ``holder`` until now + seconds; False while someone else's is live.

    On PostgreSQL "now" is the database's clock, so hosts whose clocks disagree still agree on expiry; on
    SQLite every process shares one host's clock anyway. ``now`` is for tests."""
    with svc.engine.begin() as conn:
        start: Any = now or utcnow()
        if now is None and conn.dialect.name == "postgresql":
            start = func.now()
        until = start + dt.timedelta(seconds=seconds)
        renewed = conn.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < start))
            .values(holder=holder, expires_at=until)
        ).rowcount
        if renewed == 1:
            return True
        # RETURNING, not rowcount: psycopg reports -1 for this INSERT.
        inserted = conn.execute(
            insert_for(conn.dialect.name)(Lease).values(name=name, holder=holder, expires_at=until)
            .on_conflict_do_nothing().returning(Lease.name)
        ).first()
        return inserted is not None


def release(svc: Services, holder: str) -> None:
    """Give up every lease ``holder`` has (a clean shutdown): the next process to ask takes over at once."""
    with svc.engine.begin() as conn:
        conn.execute(delete(Lease).where(Lease.holder == holder))
