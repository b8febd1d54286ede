"""Webhook subscriptions under /v1 (product.md 8): create, list, read, delete, their deliveries, replay.

Same authentication as the rest of /v1 (web/auth.py), errors in the one JSON format (web/errors.py). The
URL is checked at creation (adapters/webhook_addresses.py: https, and no loopback, private, link-local or
metadata address unless RECEIVER_WEBHOOK_ALLOW_PRIVATE=1) and again before every attempt. The secret is
returned once, in the answer to the POST that made it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import delete, func, insert, select, update

from receiver.adapters.webhook_addresses import RefusedUrl, check_url
from receiver.adapters.webhooks import system_resolver
from receiver.db.models import (
    Delivery,
    DeliveryStatus,
    Message,
    MessageType,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from receiver.services import current_services
from receiver.timeutil import dt_to_iso, parse_time_ms
from receiver.web.errors import ApiError
from receiver.web.params import choice_param, decode_cursor, encode_cursor, limit_param

bp = Blueprint("subscriptions", __name__)

MAX_BODY = 64 * 1024
MAX_FILTER_ITEMS = 1000
FIELDS = ("url", "events", "job_ids", "accounts", "description")
EVENT_TYPES = tuple(t.value for t in MessageType)
DELIVERY_STATUSES = tuple(s.value for s in DeliveryStatus)
RESOLVE_SECONDS = 5.0
REPLAY_BATCH = 1000


def _bad(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


def _json_body() -> dict[str, Any]:
    if (request.content_length or 0) > MAX_BODY:
        raise ApiError(413, "PayloadTooLarge", f"the body is over {MAX_BODY} bytes")
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY:
        raise ApiError(413, "PayloadTooLarge", f"the body is over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "InvalidJson", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidJson", "the body must be a JSON object")
    return body


def _string_list(body: dict[str, Any], name: str, max_len: int) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) > MAX_FILTER_ITEMS
            or not all(isinstance(v, str) and 1 <= len(v) <= max_len and v.isprintable() for v in value)):
        raise _bad(f"{name} must be null (all) or a list of at most {MAX_FILTER_ITEMS} strings of 1 to "
                   f"{max_len} printable characters")
    return list(dict.fromkeys(value))


def validate(body: dict[str, Any]) -> dict[str, Any]:
    """The subscription's columns from a POST body, or the 400 that says what is wrong."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(repr(u)[:60] for u in unknown[:5])}; allowed: {', '.join(FIELDS)}")
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise ApiError(400, "MissingParameter" if url is None else "InvalidParameter", "url is required (a string)")
    events = body.get("events")
    if (not isinstance(events, list) or not events
            or not all(isinstance(e, str) and e in EVENT_TYPES for e in events)):
        raise _bad(f"events must be a non-empty list of: {', '.join(EVENT_TYPES)}")
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 1000):
        raise _bad("description must be a string of at most 1000 characters, or null")
    settings = current_services().settings
    try:
        check_url(url, system_resolver(RESOLVE_SECONDS), allow_private=settings.webhook_allow_private)
    except RefusedUrl as e:
        raise ApiError(400, "UrlNotAllowed", str(e)) from None
    return {"url": url, "events": list(dict.fromkeys(events)), "job_ids": _string_list(body, "job_ids", 128),
            "accounts": _string_list(body, "accounts", 32), "description": description}


def new_subscription_id() -> str:
    """``sub_`` + 12 hex of the creation time in ms + 12 random hex: newest-first by id is by creation."""
    return f"sub_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def new_secret() -> str:
    """``whsec_`` + base64 of 24 random bytes, the Standard Webhooks secret format."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def subscription_json(sub: Subscription) -> dict[str, Any]:
    return {"id": sub.id, "url": sub.url, "events": sub.events, "job_ids": sub.job_ids, "accounts": sub.accounts,
            "description": sub.description, "status": str(sub.status), "created_at": dt_to_iso(sub.created_at)}


def delivery_json(d: Delivery, message_id: str, type_: str) -> dict[str, Any]:
    return {"id": str(d.id), "message_id": message_id, "type": type_, "status": str(d.status),
            "attempts": d.attempts, "last_status_code": d.last_status_code, "last_error": d.last_error,
            "next_attempt_at": dt_to_iso(d.next_attempt_at) if d.status == DeliveryStatus.PENDING else None,
            "delivered_at": dt_to_iso(d.delivered_at) if d.delivered_at is not None else None}


def _get_or_404(s: Any, sub_id: str) -> Subscription:
    sub = s.get(Subscription, sub_id) if len(sub_id) <= 40 and sub_id.isprintable() else None
    if sub is None:
        raise ApiError(404, "NotFound", f"no subscription {sub_id[:40]!r}")
    assert isinstance(sub, Subscription)
    return sub


@bp.post("/v1/subscriptions")
def create() -> tuple[Response, int]:
    columns = validate(_json_body())
    secret = new_secret()
    sub = Subscription(id=new_subscription_id(), secret=secret, status=SubscriptionStatus.ENABLED,
                       created_at=utcnow(), **columns)
    with current_services().sessions.begin() as s:
        s.add(sub)
        s.flush()
        out = subscription_json(sub)
    out["secret"] = secret  # the one time it is shown
    return jsonify(out), 201


@bp.get("/v1/subscriptions")
def list_subscriptions() -> Response:
    limit = limit_param()
    cursor = decode_cursor("subscriptions", ("sub",))
    q = select(Subscription)
    if cursor is not None:
        q = q.where(Subscription.id < cursor[0])
    with current_services().readers() as s:
        rows = list(s.execute(q.order_by(Subscription.id.desc()).limit(limit + 1)).scalars())
        items = [subscription_json(sub) for sub in rows[:limit]]
    next_cursor = encode_cursor("subscriptions", [rows[limit - 1].id]) if len(rows) > limit else None
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.get("/v1/subscriptions/<sub_id>")
def get_one(sub_id: str) -> Response:
    with current_services().readers() as s:
        return jsonify(subscription_json(_get_or_404(s, sub_id)))


@bp.delete("/v1/subscriptions/<sub_id>")
def delete_one(sub_id: str) -> Response:
    with current_services().sessions.begin() as s:
        _get_or_404(s, sub_id)
        # Its deliveries first (the cascade would too): nothing pending is attempted after this answer.
        s.execute(delete(Delivery).where(Delivery.subscription_id == sub_id))
        s.execute(delete(Subscription).where(Subscription.id == sub_id))
    return Response(status=204)


@bp.get("/v1/subscriptions/<sub_id>/deliveries")
def deliveries(sub_id: str) -> Response:
    status = choice_param("status", DELIVERY_STATUSES)
    limit = limit_param()
    scope = f"deliveries:{sub_id}:{status}"
    cursor = decode_cursor(scope, ("id",))
    q = (select(Delivery, Message.message_id, Message.type).join(Message, Message.id == Delivery.message_id)
         .where(Delivery.subscription_id == sub_id))
    if status is not None:
        q = q.where(Delivery.status == status)
    if cursor is not None:
        q = q.where(Delivery.id < cursor[0])
    with current_services().readers() as s:
        _get_or_404(s, sub_id)
        rows = s.execute(q.order_by(Delivery.id.desc()).limit(limit + 1)).all()
        items = [delivery_json(d, mid, str(t)) for d, mid, t in rows[:limit]]
    next_cursor = encode_cursor(scope, [rows[limit - 1][0].id]) if len(rows) > limit else None
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.post("/v1/subscriptions/<sub_id>/replay")
def replay(sub_id: str) -> tuple[Response, int]:
    body = _json_body()
    unknown = sorted(set(body) - {"since"})
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(repr(u)[:60] for u in unknown[:5])}; allowed: since")
    if body.get("since") is None:
        raise ApiError(400, "MissingParameter", "since is required (ISO-8601 or Unix milliseconds)")
    since_ms = parse_time_ms(body["since"])
    if since_ms is None or isinstance(body["since"], float):
        raise _bad(f"since must be ISO-8601 or Unix milliseconds, got {str(body['since'])[:100]!r}")
    since = dt.datetime.fromtimestamp(since_ms / 1000, dt.UTC)
    now = utcnow()
    count = 0
    with current_services().sessions.begin() as s:
        sub = _get_or_404(s, sub_id)
        q = select(Message.id, Message.type, Message.job_id, Message.account).where(
            Message.created_at >= since, Message.type.in_(sub.events))
        if sub.job_ids is not None:
            q = q.where(Message.job_id.in_(sub.job_ids))
        rows = []
        for m in s.execute(q.order_by(Message.id)):
            if sub.accounts is not None and (m.account or "default") not in sub.accounts:
                continue
            rows.append({"subscription_id": sub.id, "message_id": m.id, "status": DeliveryStatus.PENDING,
                         "attempts": 0, "next_attempt_at": now, "created_at": now})
            if len(rows) >= REPLAY_BATCH:
                s.execute(insert(Delivery), rows)
                count += len(rows)
                rows = []
        if rows:
            s.execute(insert(Delivery), rows)
            count += len(rows)
        # A replay is the way back for a disabled subscription: it is enabled again.
        s.execute(update(Subscription).where(Subscription.id == sub.id)
                  .values(status=SubscriptionStatus.ENABLED, failing_since=None, disabled_at=None))
        total = s.execute(select(func.count()).select_from(Delivery)
                          .where(Delivery.subscription_id == sub.id,
                                 Delivery.status == DeliveryStatus.PENDING)).scalar_one()
    return jsonify({"subscription_id": sub_id, "since": dt_to_iso(since), "deliveries": count,
                    "pending": total}), 202
