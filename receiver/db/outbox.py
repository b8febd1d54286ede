"""The transactional outbox of product.md 8: a push message is a row written on the caller's connection, in
the same transaction as what it announces. Delivery (webhooks, the live stream) reads the rows later."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from functools import cache
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.sql import Executable

from receiver.db.models import Message, MessageType, utcnow
from receiver.timeutil import dt_to_iso

# Set on a connection that wrote a message: a live feed in this process (web/live.py) wakes when it commits.
WROTE = "receiver.outbox.wrote"


def new_message_id() -> str:
    """``msg_`` + 32 hex characters (128 random bits): unique without coordination between processes."""
    return "msg_" + secrets.token_hex(16)


def message_body(type_: MessageType, data: dict[str, Any], now: dt.datetime) -> str:
    """The exact bytes a subscriber receives: ``{"type", "timestamp", "data"}``."""
    return json.dumps({"type": type_.value, "timestamp": dt_to_iso(now), "data": data},
                      separators=(",", ":"), ensure_ascii=False)


@cache
def _insert_statement() -> Executable:
    return insert(Message)


def record(conn: Connection, type_: MessageType, data: dict[str, Any], *, job_id: str | None,
           account: str | None, now: dt.datetime | None = None) -> str:
    """Write one message on ``conn`` (commits with the caller's transaction); returns its message id."""
    now = now or utcnow()
    mid = new_message_id()
    conn.execute(_insert_statement(), {"message_id": mid, "type": type_, "job_id": job_id, "account": account,
                                       "body": message_body(type_, data, now), "created_at": now,
                                       "fanned_out": False})
    conn.info[WROTE] = True
    return mid
