"""RECEIVER_MESSAGE_RETENTION_DAYS: delete push messages and finished webhook deliveries older than that.

The outbox grows by a row per snapshot and a delivery per subscriber, so the maintenance loop (hourly, one
process per deployment: a lease) trims it. Kept: pending deliveries, whatever their age, and the messages
they still need; messages not yet fanned out. A failed delivery is replayable until its message goes. The
live stream only resumes over the last hour, so a week is plenty for it. Batches keep each transaction short.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, exists, select

from receiver.db.models import Delivery, DeliveryStatus, Message, utcnow
from receiver.services import Services

BATCH = 500


def prune_push(svc: Services, older_than_seconds: float, now: dt.datetime | None = None,
               batch: int = BATCH) -> tuple[int, int]:
    """(messages, deliveries) deleted."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=older_than_seconds)
    deliveries = messages = 0
    while True:
        with svc.engine.begin() as conn:
            ids = list(conn.execute(select(Delivery.id).where(Delivery.status != DeliveryStatus.PENDING,
                                                              Delivery.created_at < cutoff)
                                    .order_by(Delivery.id).limit(batch)).scalars())
            if ids:
                conn.execute(delete(Delivery).where(Delivery.id.in_(ids)))
        deliveries += len(ids)
        if len(ids) < batch:
            break
    pending = exists().where(Delivery.message_id == Message.id, Delivery.status == DeliveryStatus.PENDING)
    while True:
        with svc.engine.begin() as conn:
            ids = list(conn.execute(select(Message.id).where(Message.created_at < cutoff,
                                                             Message.fanned_out.is_(True), ~pending)
                                    .order_by(Message.id).limit(batch)).scalars())
            if ids:
                conn.execute(delete(Delivery).where(Delivery.message_id.in_(ids)))
                conn.execute(delete(Message).where(Message.id.in_(ids)))
        messages += len(ids)
        if len(ids) < batch:
            break
    return messages, deliveries
