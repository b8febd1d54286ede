"""Webhooks (product.md 8): messages fan out into deliveries, and each delivery is attempted until a 2xx or
the end of RECEIVER_WEBHOOK_RETRY_SCHEDULE.

The tables are the truth, as for events. ``fan_out`` turns messages not yet fanned out into one pending
delivery per matching enabled subscription, and marks them, in one transaction, so a crash repeats or loses
nothing. It runs apart from the transaction that wrote the message (the indexing one stays as cheap as
before, whatever the number of subscriptions), and only sees committed messages. A subscription gets the
messages written after it was created (``replay`` reaches further back).

``deliver(id)`` claims a due delivery with a lease (one atomic UPDATE, as events are claimed), makes one
attempt, and records the outcome only while it still holds the claim; a process killed mid-attempt leaves
a lease that runs out, and the delivery is attempted again with the same webhook-id (at least once).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Row, bindparam, false, insert, or_, select, update
from sqlalchemy.sql import Executable

from receiver.adapters.webhooks import Attempt, WebhookSender
from receiver.db.models import Delivery, DeliveryStatus, Message, Subscription, SubscriptionStatus, utcnow
from receiver.services import Services

log = logging.getLogger(__name__)

FANOUT_BATCH = 500
# An attempt takes at most adapters.webhooks.TIMEOUT (10 s); the lease outlives it, so only a dead process's
# claim runs out.
LEASE_SECONDS = 15.0
CLOCK_TOLERANCE = dt.timedelta(seconds=2)
DEFAULT_ACCOUNT = "default"  # what a subscription's `accounts` filter matches for a message without one


def matches(sub: Any, msg: Any) -> bool:
    """Does subscription ``sub`` want message ``msg`` (type, job and account filters)?"""
    return (str(msg.type) in sub.events
            and (sub.job_ids is None or msg.job_id in sub.job_ids)
            and (sub.accounts is None or (msg.account or DEFAULT_ACCOUNT) in sub.accounts))


def fan_out(svc: Services, batch: int = FANOUT_BATCH) -> int:
    """One batch of messages into deliveries; returns how many deliveries it made (0: nothing to do)."""
    with svc.read_engine.connect() as conn:
        # The idle case (every poll) stays a read: on SQLite it never takes the write lock.
        if conn.execute(select(Message.id).where(Message.fanned_out == false()).limit(1)).first() is None:
            return 0
    now = utcnow()
    with svc.engine.begin() as conn:
        # SKIP LOCKED: processes fanning out at once on PostgreSQL take different messages; SQLite serialises.
        msgs = conn.execute(
            select(Message.id, Message.type, Message.job_id, Message.account, Message.created_at)
            .where(Message.fanned_out == false()).order_by(Message.id).limit(batch)
            .with_for_update(skip_locked=True)).all()
        if not msgs:
            return 0
        subs = conn.execute(select(Subscription.id, Subscription.events, Subscription.job_ids,
                                   Subscription.accounts, Subscription.created_at)
                            .where(Subscription.status == SubscriptionStatus.ENABLED)).all()
        rows = [{"subscription_id": sub.id, "message_id": m.id, "status": DeliveryStatus.PENDING, "attempts": 0,
                 "next_attempt_at": now, "created_at": now}
                for m in msgs for sub in subs if sub.created_at <= m.created_at and matches(sub, m)]
        if rows:
            conn.execute(insert(Delivery), rows)
        conn.execute(update(Message).where(Message.id.in_([m.id for m in msgs])).values(fanned_out=True))
    return len(rows)


def due_deliveries(svc: Services, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[Row[int, str]]:
    """(id, subscription_id) of deliveries to attempt now: pending and due, not claimed by a live attempt."""
    now = utcnow()
    q = (select(Delivery.id, Delivery.subscription_id)
         .where(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now,
                or_(Delivery.lease_until.is_(None), Delivery.lease_until < now))
         .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit + len(exclude)))
    with svc.read_engine.connect() as conn:
        rows = [r for r in conn.execute(q).all() if r.id not in exclude]
    return rows[:limit]


@dataclass(frozen=True)
class Claimed:
    id: int
    attempts: int
    subscription_id: str
    url: str
    secret: str
    subscription_status: str
    message_id: str
    body: str


def claim(svc: Services, delivery_ids: list[int]) -> list[Claimed]:
    """Claim those of ``delivery_ids`` that are due and unclaimed, in one transaction (one UPDATE): the write
    lock is taken once per batch, not once per delivery (on SQLite, callbacks wait for it)."""
    if not delivery_ids:
        return []
    now = utcnow()
    with svc.engine.begin() as conn:
        claimed = dict(conn.execute(
            update(Delivery)
            .where(Delivery.id.in_(delivery_ids), Delivery.status == DeliveryStatus.PENDING,
                   Delivery.next_attempt_at <= now + CLOCK_TOLERANCE,
                   or_(Delivery.lease_until.is_(None), Delivery.lease_until < now))
            .values(attempts=Delivery.attempts + 1, lease_until=now + dt.timedelta(seconds=LEASE_SECONDS))
            .returning(Delivery.id, Delivery.attempts)).all())
        if not claimed:
            return []
        rows = conn.execute(
            select(Delivery.id, Subscription.id, Subscription.url, Subscription.secret, Subscription.status,
                   Message.message_id, Message.body)
            .select_from(Delivery)
            .join(Subscription, Subscription.id == Delivery.subscription_id)
            .join(Message, Message.id == Delivery.message_id)
            .where(Delivery.id.in_(list(claimed)))).all()
    # A delivery whose subscription was deleted meanwhile is gone with it (the cascade), so it has no row here.
    return [Claimed(i, claimed[i], sub, url, secret, str(status), mid, body)
            for i, sub, url, secret, status, mid, body in sorted(rows)]


def next_delay(schedule: tuple[float, ...], attempts: int) -> float | None:
    """Seconds until the retry after failed attempt number ``attempts`` (from 1), or None: give up."""
    return schedule[attempts - 1] if attempts <= len(schedule) else None


DISABLED = Attempt(False, None, "subscription disabled")


def attempt(sender: WebhookSender, c: Claimed) -> Attempt:
    """One try of a claimed delivery (no database); a disabled subscription's delivery is not sent at all."""
    if c.subscription_status != SubscriptionStatus.ENABLED:
        return DISABLED
    result = sender.send(c.url, c.secret, c.message_id, c.body.encode())
    if result.ok:
        log.debug("delivery %s (%s) delivered: %s", c.id, c.message_id, result.status_code)
    else:
        log.info("delivery %s (%s) attempt %d failed: %s", c.id, c.message_id, c.attempts, result.error)
    return result


@cache
def _record_statement() -> Executable:
    # Built once with bound parameters (as pipeline._claim_statement): constructing it per delivery cost
    # more than running it, in the process that also answers callbacks.
    return (update(Delivery)
            .where(Delivery.id == bindparam("delivery_id"), Delivery.attempts == bindparam("claimed_attempts"),
                   Delivery.status == DeliveryStatus.PENDING)
            .values(status=bindparam("new_status"), last_status_code=bindparam("code"), last_error=bindparam("error"),
                    lease_until=None, next_attempt_at=bindparam("next_at"), delivered_at=bindparam("delivered")))


def record(svc: Services, results: list[tuple[Claimed, Attempt]]) -> list[str]:
    """Write the outcomes of attempts, in one transaction; each only while its claim holds (after a lost
    lease the delivery is someone else's attempt now). Returns each delivery's status (``lost`` if not ours)."""
    now = utcnow()
    out: list[str] = []
    stmt = _record_statement()
    with svc.engine.begin() as conn:
        for c, a in results:
            status, next_at = DeliveryStatus.DELIVERED, now
            if not a.ok:
                delay = None if a is DISABLED else next_delay(svc.settings.webhook_retry_schedule, c.attempts)
                status = DeliveryStatus.FAILED if delay is None else DeliveryStatus.PENDING
                next_at = now + dt.timedelta(seconds=delay or 0)
            params = {"delivery_id": c.id, "claimed_attempts": c.attempts, "new_status": status,
                      "code": a.status_code, "error": a.error, "next_at": next_at,
                      "delivered": now if a.ok else None}
            held = conn.execute(stmt, params).rowcount == 1
            out.append(str(status) if held else "lost")
        by_sub: dict[str, bool] = {}
        for c, a in results:
            if a is not DISABLED:
                by_sub[c.subscription_id] = by_sub.get(c.subscription_id, False) or a.ok
        for sub_id, any_ok in by_sub.items():
            _record_subscription(conn, svc, sub_id, any_ok, now)
    return out


def _record_subscription(conn: Any, svc: Services, sub_id: str, ok: bool, now: dt.datetime) -> None:
    sub = Subscription.__table__.c
    if ok:
        conn.execute(update(Subscription).where(Subscription.id == sub_id, sub.failing_since.is_not(None))
                     .values(failing_since=None))
        return
    conn.execute(update(Subscription).where(Subscription.id == sub_id, sub.failing_since.is_(None))
                 .values(failing_since=now))
    # Every attempt has failed since failing_since (a success clears it): long enough, and it is disabled.
    cutoff = now - dt.timedelta(seconds=svc.settings.webhook_disable_after)
    disabled = conn.execute(
        update(Subscription).where(Subscription.id == sub_id, Subscription.status == SubscriptionStatus.ENABLED,
                                   sub.failing_since <= cutoff)
        .values(status=SubscriptionStatus.DISABLED, disabled_at=now)).rowcount
    if disabled:
        log.warning("webhook subscription %s disabled: every attempt failed for %g s", sub_id,
                    svc.settings.webhook_disable_after)
        # What is still pending for it would only fail too; replay (which enables it again) sends it later.
        conn.execute(update(Delivery).where(Delivery.subscription_id == sub_id,
                                            Delivery.status == DeliveryStatus.PENDING)
                     .values(status=DeliveryStatus.FAILED, last_error="subscription disabled", lease_until=None))


def deliver(svc: Services, sender: WebhookSender, delivery_id: int) -> str:
    """One attempt of one delivery, if it is due and unclaimed; returns the delivery's status after it
    (``skipped`` when there was nothing to do, ``lost`` when its claim was taken over meanwhile)."""
    claimed = claim(svc, [delivery_id])
    if not claimed:
        return "skipped"
    return record(svc, [(claimed[0], attempt(sender, claimed[0]))])[0]
