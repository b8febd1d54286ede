"""GET /openapi.json: the OpenAPI 3.1 document of the whole HTTP interface (product.md section 3).

Built per app, so configured thumbnail widths appear as the enum they are, and filtered to the routes the
app actually serves (an operation in the document that the app lacks would be a lie). The component
schemas are the contract the API tests validate every response against.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, Response, current_app, jsonify

from receiver.config import Settings
from receiver.db.models import EVENT_ORIGINS, EVENT_STATUSES, MessageType
from receiver.media.health import STATUSES as HEALTH_STATUSES
from receiver.services import services
from receiver.web.params import MAX_LIMIT

_REF = "#/components/schemas/"
MESSAGE_TYPES = tuple(t.value for t in MessageType)


def ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


_TIME = {"type": "string", "format": "date-time"}
_ID = {"type": "string", "pattern": "^[0-9]+$"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }},
    },
    "Thumbnail": {
        "type": "object", "required": ["width", "height", "format", "url"],
        "properties": {
            "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
            "format": {"enum": ["jpeg", "webp"]},
            "url": {"type": "string", "description": "Relative URL; carries exp and sig when API keys are on"},
        },
    },
    "Snapshot": {
        "type": "object",
        "required": ["id", "job_id", "captured_at", "captured_at_ms", "kind", "source", "width", "height",
                     "sha256", "thumbnails"],
        "properties": {
            "id": _ID, "job_id": {"type": "string"},
            "captured_at": _TIME, "captured_at_ms": {"type": "integer"},
            "kind": {"enum": ["sequence", "overwrite"]},
            "source": {
                "type": "object", "required": ["endpoint", "bucket", "object", "etag", "size"],
                "properties": {"endpoint": {"type": "string"}, "bucket": {"type": "string"},
                               "object": {"type": "string"}, "etag": {"type": "string"},
                               "size": {"type": "integer", "minimum": 0}},
            },
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "thumbnails": {"type": "array", "items": ref("Thumbnail")},
            "placeholder": _nullable({"type": "object"}),
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "name", "status", "stream_url", "interval_seconds", "tracked", "account", "latest",
                     "health"],
        "properties": {
            "job_id": {"type": "string"},
            "account": {"type": "string", "description": "alias of the account the job belongs to"},
            "name": _nullable({"type": "string"}),
            "status": _nullable({"type": "string", "description": "ICE's job status"}),
            "stream_url": _nullable({"type": "string"}),
            "interval_seconds": _nullable({"type": "integer"}),
            "tracked": {"type": "boolean"},
            "latest": _nullable(ref("Snapshot")),
            "health": _nullable({"type": "string", "description": "status of the health answer at now"}),
        },
    },
    "JobDetail": {
        "allOf": [ref("Job"), {
            "type": "object", "required": ["counters"],
            "properties": {
                "oss_endpoint": _nullable({"type": "string"}), "oss_bucket": _nullable({"type": "string"}),
                "overwrite_format": _nullable({"type": "string"}),
                "sequence_format": _nullable({"type": "string"}),
                "fetched_at": _nullable(_TIME), "reconciled_until": _nullable(_TIME),
                "counters": {
                    "type": "object", "required": ["snapshots", "events"],
                    "properties": {
                        "snapshots": {"type": "integer", "minimum": 0},
                        "first_captured_at": _nullable(_TIME), "last_captured_at": _nullable(_TIME),
                        "events": {"type": "object", "required": list(EVENT_STATUSES),
                                   "properties": {s: {"type": "integer", "minimum": 0} for s in EVENT_STATUSES}},
                    },
                },
            },
        }],
    },
    "Event": {
        "type": "object",
        "required": ["id", "job_id", "status", "origin", "received_at", "attempts", "last_error", "snapshot_ids"],
        "properties": {
            "id": _ID, "job_id": {"type": "string"},
            "status": {"enum": list(EVENT_STATUSES)}, "origin": {"enum": list(EVENT_ORIGINS)},
            "received_at": _TIME, "attempts": {"type": "integer", "minimum": 0},
            "last_error": _nullable({"type": "string"}),
            "snapshot_ids": {"type": "array", "items": _ID},
            "object": _nullable({"type": "string"}),
        },
    },
    "Run": {
        "type": "object", "required": ["start", "end", "start_ms", "end_ms", "snapshots"],
        "properties": {"start": _TIME, "end": _TIME, "start_ms": {"type": "integer"},
                       "end_ms": {"type": "integer"}, "snapshots": {"type": "integer"}},
    },
    "Health": {
        "type": "object",
        "required": ["job_id", "since", "until", "interval_seconds", "expected", "seen", "status", "gaps",
                     "frozen", "black"],
        "properties": {
            "job_id": {"type": "string"}, "since": _TIME, "until": _TIME,
            "interval_seconds": _nullable({"type": "integer"}),
            "expected": {"type": "integer"}, "seen": {"type": "integer"},
            "status": {"enum": list(HEALTH_STATUSES)},
            "gaps": {"type": "array", "items": ref("Run")},
            "frozen": {"type": "array", "items": ref("Run")},
            "black": {"type": "array", "items": ref("Run")},
        },
    },
    "CallbackAnswer": {
        "type": "object", "required": ["status", "events"],
        "properties": {
            "status": {"enum": ["accepted", "duplicate"]},
            "events": {"type": "array", "items": _ID},
            "skipped": {"type": "array", "items": {"type": "object", "required": ["code", "message"]}},
        },
    },
    "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Account": {
        "type": "object", "additionalProperties": False,
        "required": ["alias", "uid", "region", "credential_type", "credential_status", "credential_expires_at",
                     "last_error", "jobs", "ice_calls", "ice_throttled"],
        "properties": {
            "alias": {"type": "string"}, "uid": _nullable({"type": "string"}), "region": {"type": "string"},
            "credential_type": {"enum": ["access_key", "ram_role_arn", "credentials_uri", "oidc_role_arn",
                                         "default"]},
            "credential_status": {"enum": ["ok", "refreshing", "error"]},
            "credential_expires_at": _nullable(_TIME), "last_error": _nullable({"type": "string"}),
            "jobs": {"type": "integer", "minimum": 0},
            "ice_calls": {"type": "integer", "minimum": 0, "description": "ICE calls of this process"},
            "ice_throttled": {"type": "integer", "minimum": 0,
                              "description": "throttling answers this process got"},
        },
    },
    "NewSubscription": {
        "type": "object", "required": ["url", "events"], "additionalProperties": False,
        "properties": {
            "url": {"type": "string", "maxLength": 2048,
                    "description": "https (http too with RECEIVER_WEBHOOK_ALLOW_PRIVATE=1); refused (400 "
                                   "UrlNotAllowed) when it resolves to a loopback, private, link-local or "
                                   "metadata address"},
            "events": {"type": "array", "minItems": 1, "items": {"enum": list(MESSAGE_TYPES)}},
            "job_ids": _nullable({"type": "array", "maxItems": 1000,
                                  "items": {"type": "string", "minLength": 1, "maxLength": 128}}),
            "accounts": _nullable({"type": "array", "maxItems": 1000,
                                   "items": {"type": "string", "minLength": 1, "maxLength": 32}}),
            "description": _nullable({"type": "string", "maxLength": 1000}),
        },
    },
    "Subscription": {
        "type": "object",
        "required": ["id", "url", "events", "job_ids", "accounts", "description", "status", "created_at"],
        "properties": {
            "id": {"type": "string", "pattern": "^sub_[0-9a-f]{24}$"}, "url": {"type": "string"},
            "events": {"type": "array", "items": {"enum": list(MESSAGE_TYPES)}},
            "job_ids": _nullable({"type": "array", "items": {"type": "string"}}),
            "accounts": _nullable({"type": "array", "items": {"type": "string"}}),
            "description": _nullable({"type": "string"}),
            "status": {"enum": ["enabled", "disabled"]}, "created_at": _TIME,
        },
    },
    "CreatedSubscription": {"allOf": [{"$ref": "#/components/schemas/Subscription"}, {
        "type": "object", "required": ["secret"],
        "properties": {"secret": {"type": "string", "pattern": "^whsec_", "description": "shown only here"}},
    }]},
    "Delivery": {
        "type": "object",
        "required": ["id", "message_id", "type", "status", "attempts", "last_status_code", "last_error",
                     "next_attempt_at", "delivered_at"],
        "properties": {
            "id": _ID, "message_id": {"type": "string", "pattern": "^msg_"}, "type": {"enum": list(MESSAGE_TYPES)},
            "status": {"enum": ["pending", "delivered", "failed"]}, "attempts": {"type": "integer", "minimum": 0},
            "last_status_code": _nullable({"type": "integer"}), "last_error": _nullable({"type": "string"}),
            "next_attempt_at": _nullable(_TIME), "delivered_at": _nullable(_TIME),
        },
    },
    "Replay": {
        "type": "object", "required": ["since"], "additionalProperties": False,
        "properties": {"since": {"type": ["string", "integer"], "description": "ISO-8601 or Unix milliseconds"}},
    },
    "ReplayAnswer": {
        "type": "object", "required": ["subscription_id", "since", "deliveries", "pending"],
        "properties": {"subscription_id": {"type": "string"}, "since": _TIME,
                       "deliveries": {"type": "integer", "minimum": 0}, "pending": {"type": "integer", "minimum": 0}},
    },
}


def page_schema(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "next_cursor"], "additionalProperties": False,
            "properties": {"items": {"type": "array", "items": ref(item)},
                           "next_cursor": _nullable({"type": "string"})}}


for _item in ("Job", "Snapshot", "Event", "Account", "Subscription", "Delivery"):
    SCHEMAS[f"{_item}Page"] = page_schema(_item)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


def _q(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


_PATH_JOB = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_PATH_SNAP = {"name": "snapshot_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME_DESC = "ISO-8601 (Z or offset; naive = UTC) or Unix milliseconds"
_SINCE = _q("since", {"type": "string"}, f"inclusive lower bound; {_TIME_DESC}")
_UNTIL = _q("until", {"type": "string"}, f"exclusive upper bound; {_TIME_DESC}")
_LIMIT = _q("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}, "page size")
_CURSOR = _q("cursor", {"type": "string"}, "next_cursor of the previous page, with the same filters")
_ETAG = {"ETag": {"schema": {"type": "string"}}, "Cache-Control": {"schema": {"type": "string"}}}


def _path(name: str, description: str, digits: int) -> dict[str, Any]:
    # Digits in a string, as the route takes them: the view parses them strictly and answers 400 otherwise.
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": f"^[0-9]{{1,{digits}}}$"}}


def _viewer(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": params + [
        _q("poll", {"type": "string", "pattern": r"^[0-9]{1,4}(\.[0-9]{1,3})?$"},
           "seconds between refreshes, 0.5 to 3600 (default 5)"),
        _q("page", {"type": "integer", "minimum": 1, "maximum": 1000}, "history page size (default 60)"),
    ], "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                     "400": _err("bad poll or page")}}}


def _read(summary: str, ok: dict[str, Any], params: list[dict[str, Any]], *, not_found: bool = True,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok, "400": _err("bad query parameter"),
                                 "401": _err("RECEIVER_API_KEYS is set and no valid Bearer key was sent"),
                                 "403": _err("a URL signature that is wrong or expired")}
    if not_found:
        responses["404"] = _err("no such job or snapshot, or nothing yet")
    responses.update(extra or {})
    return {"get": {"summary": summary, "parameters": params, "responses": responses,
                    "security": [{"bearerAuth": []}, {}]}}


def _callback_op(token: bool) -> dict[str, Any]:
    params = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}] if token else []
    return {"post": {
        "summary": "ICE live snapshot callback" + (" (RECEIVER_CALLBACK_TOKEN set)" if token else ""),
        "description": "An untrusted hint, parsed leniently: an ICE envelope, flat fields, a list, or a FileList.",
        "parameters": params + [
            {"name": "X-ICE-TIMESTAMP", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "X-ICE-SIGNATURE", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": ["object", "array"]},
            "example": {"EventType": "LiveSnapshotComplete", "MessageBody": {"JobId": "job-1",
                        "OssObject": "snapshot/job-1/1796212805123.jpg", "CreateTimestamp": 1796212805123}},
        }}},
        "responses": {
            "200": _json(ref("CallbackAnswer"), "recorded, or a duplicate of a recorded event"),
            "400": _err("not JSON, not an object or list, or no JobId"),
            "401": _err("bad or stale signature, or wrong token"),
            "404": _err("the path does not match the token configuration"),
            "413": _err("body over RECEIVER_MAX_CALLBACK_BYTES"),
            "503": _err("database unavailable; ICE retries"),
        },
    }}


def _paths(settings: Settings) -> dict[str, Any]:
    widths = sorted(settings.thumbnail_widths)
    range_ = [_SINCE, _UNTIL]
    image = {"description": "the thumbnail", "headers": _ETAG,
             "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                         "image/webp": {"schema": {"type": "string", "format": "binary"}}}}
    thumb = _read("Thumbnail bytes (strong ETag, immutable)", image, [
        _PATH_SNAP, _q("width", {"type": "integer", "enum": widths}, "default: the largest"),
        _q("exp", {"type": "string"}, "signed URL expiry"), _q("sig", {"type": "string"}, "signed URL signature"),
    ], extra={"302": {"description": "redirect to a presigned thumbnail-store URL"},
              "304": {"description": "If-None-Match matched"}})
    thumb["get"]["security"] = [{"bearerAuth": []}, {"signedExp": [], "signedSig": []}, {}]
    return {
        "/callbacks/live-snapshot": _callback_op(False),
        "/callbacks/live-snapshot/{token}": _callback_op(True),
        "/v1/jobs": _read("Jobs seen or tracked, each with its latest snapshot",
                          _json(ref("JobPage"), "a page of jobs"),
                          [_q("account", {"type": "string"}, "only this account's jobs"), _LIMIT, _CURSOR],
                          not_found=False),
        "/v1/accounts": _read("The accounts served, their credentials' state and ICE usage (never a secret)",
                              _json(ref("AccountPage"), "every account (one page)"), [], not_found=False),
        "/v1/jobs/{job_id}": _read("A job as last read from ICE, with counters",
                                   _json(ref("JobDetail"), "the job"), [_PATH_JOB]),
        "/v1/jobs/{job_id}/snapshots": _read(
            "History of a job", {**_json(ref("SnapshotPage"), "a page of snapshots"), "headers": _ETAG},
            [_PATH_JOB, *range_, _q("order", {"enum": ["desc", "asc"], "default": "desc"}, "by captured_at"),
             _LIMIT, _CURSOR], extra={"304": {"description": "If-None-Match matched"}}),
        "/v1/jobs/{job_id}/snapshots/latest": _read("Newest snapshot", _json(ref("Snapshot"), "it"), [_PATH_JOB]),
        "/v1/jobs/{job_id}/snapshots/nearest": _read(
            "The snapshot closest to a moment (ties: the earlier)", _json(ref("Snapshot"), "it"),
            [_PATH_JOB, _q("time", {"type": "string"}, _TIME_DESC, required=True)]),
        "/v1/jobs/{job_id}/health": _read("Expected vs seen snapshots, gaps, frozen and black runs",
                                          _json(ref("Health"), "health over the window"), [_PATH_JOB, *range_]),
        "/v1/jobs/{job_id}/storyboard.vtt": _read(
            "WebVTT preview track", {"description": "WebVTT", "content": {"text/vtt": {"schema": {"type": "string"}}}},
            [_PATH_JOB, *range_]),
        "/v1/snapshots/{snapshot_id}": _read("One snapshot", _json(ref("Snapshot"), "it"), [_PATH_SNAP]),
        "/v1/snapshots/{snapshot_id}/original": _read(
            "The full-size JPEG", {"description": "the JPEG",
                                   "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
            [_PATH_SNAP], extra={"302": {"description": "redirect to a presigned OSS URL"}}),
        "/v1/snapshots/{snapshot_id}/thumbnail": thumb,
        "/v1/events": _read("Callback events, newest first (operators)", _json(ref("EventPage"), "a page of events"),
                            [_q("status", {"enum": list(EVENT_STATUSES)}, "filter"),
                             _q("job_id", {"type": "string"}, "filter"), _LIMIT, _CURSOR], not_found=False),
        **_subscription_paths(),
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(ref("Status"), "alive")}}},
        "/readyz": {"get": {"summary": "Readiness: database reachable, migrations at head", "responses": {
            "200": _json(ref("Status"), "ready"), "503": _err("not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/v1/jobs/{job_id}/storyboard/{since}-{until}-{sheet}.jpg": _read(
            "A storyboard sprite sheet (the URLs come from storyboard.vtt)",
            {"description": "the sheet", "headers": _ETAG,
             "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
            [_PATH_JOB, _path("since", "Unix ms", 14), _path("until", "Unix ms, after since", 14),
             _path("sheet", "sheet index from 0", 4), _q("v", {"type": "string"}, "digest of the sheet's tiles"),
             _q("exp", {"type": "string"}, "signed URL expiry"), _q("sig", {"type": "string"}, "signed URL signature")],
            extra={"304": {"description": "If-None-Match matched"}}),
        "/": _viewer("The viewer: every job with its latest frame", []),
        "/jobs/{job_id}": _viewer("The viewer: one job's timeline and history", [_PATH_JOB]),
    }


_AUTH = {"401": _err("RECEIVER_API_KEYS is set and no valid Bearer key was sent")}
_PATH_SUB = {"name": "sub_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _write(method: str, summary: str, ok: dict[str, Any], params: list[dict[str, Any]], status: str,
           body: str | None, errors: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params, "security": [{"bearerAuth": []}, {}],
                          "responses": {status: ok, **_AUTH, **errors}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(body)}}}
    return {method: op}


def _subscription_paths() -> dict[str, Any]:
    """product.md 8: webhook subscriptions."""
    bad = {"400": _err("bad body: not JSON, unknown field, bad value, or a URL that is not allowed"),
           "413": _err("body over 64 KiB")}
    missing = {"404": _err("no such subscription")}
    one = _read("One subscription (without its secret)", _json(ref("Subscription"), "it"), [_PATH_SUB])
    one.update(_write("delete", "Delete a subscription; its pending deliveries are never sent",
                      {"description": "deleted"}, [_PATH_SUB], "204", None, missing))
    listing = _read("Webhook subscriptions, newest first", _json(ref("SubscriptionPage"), "a page"),
                    [_LIMIT, _CURSOR], not_found=False)
    listing.update(_write("post", "Subscribe a URL to push messages", _json(ref("CreatedSubscription"),
                          "created; the secret is shown only in this answer"), [], "201", "NewSubscription", bad))
    return {
        "/v1/subscriptions": listing,
        "/v1/subscriptions/{sub_id}": one,
        "/v1/subscriptions/{sub_id}/deliveries": _read(
            "A subscription's deliveries, newest first", _json(ref("DeliveryPage"), "a page"),
            [_PATH_SUB, _q("status", {"enum": ["pending", "delivered", "failed"]}, "filter"), _LIMIT, _CURSOR]),
        "/v1/subscriptions/{sub_id}/replay": _write(
            "post", "Send again every matching message since a time (new deliveries, same message ids); "
            "enables a disabled subscription", _json(ref("ReplayAnswer"), "queued"), [_PATH_SUB], "202", "Replay",
            {**bad, **missing}),
    }


_ONE_TYPE = "(" + "|".join(re.escape(t.value) for t in MessageType) + ")"
_TYPES_LIST = f"^{_ONE_TYPE}(,{_ONE_TYPE})*$"


def _stream_paths() -> dict[str, Any]:
    """GET /v1/stream (Server-Sent Events, product.md 8) and the signed URL a browser opens it with."""
    filters = [_q("job_id", {"type": "string", "maxLength": 128}, "only this job's messages"),
               _q("types", {"type": "string", "pattern": _TYPES_LIST}, "comma-separated message types: "
                  + ", ".join(t.value for t in MessageType))]
    sse = {"description": "text/event-stream: `id: <sequence>`, `event: <type>`, `data: <the webhook body>` per "
                          "message; a `: keepalive` comment every 15 s",
           "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    stream = _read("Live updates (Server-Sent Events); Last-Event-ID resumes within the last hour", sse, [
        *filters, _q("last_event_id", {"type": "string", "pattern": "^[0-9]+$"},
                     "resume after this id (as the Last-Event-ID header does)"),
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "resume after this id: what was written since, within the last hour, comes first"},
        _q("exp", {"type": "string"}, "signed URL expiry"), _q("sig", {"type": "string"}, "signed URL signature"),
    ], not_found=False, extra={"503": _err("this web process serves RECEIVER_STREAM_CLIENTS streams already")})
    stream["get"]["security"] = [{"bearerAuth": []}, {"signedExp": [], "signedSig": []}, {}]
    url = {"type": "object", "required": ["url", "expires_in"], "properties": {
        "url": {"type": "string", "description": "relative URL of the stream with these filters; signed when API "
                                                 "keys are on"},
        "expires_in": {"oneOf": [{"type": "integer"}, {"type": "null"}],
                       "description": "seconds the signature lets a client connect (an open stream outlives it)"}}}
    return {
        "/v1/stream": stream,
        "/v1/stream/url": _read("A short-lived signed URL of the stream, for EventSource (which cannot send headers)",
                                _json(url, "the URL"), filters, not_found=False),
    }


def _served(app: Flask) -> set[str]:
    return {re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()}


def build_spec(app: Flask) -> dict[str, Any]:
    settings: Settings = services(app).settings
    served = _served(app)
    return {
        "openapi": "3.1.0",
        "info": {"title": "receiver", "version": "1",
                 "description": "Callback receiver and read API for Alibaba Cloud ICE live snapshot jobs. "
                                "Errors are always {\"error\": {\"code\", \"message\"}}."},
        "paths": {p: op for p, op in {**_paths(settings), **_stream_paths()}.items() if p in served},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "a key of RECEIVER_API_KEYS"},
                "signedExp": {"type": "apiKey", "in": "query", "name": "exp"},
                "signedSig": {"type": "apiKey", "in": "query", "name": "sig"},
            },
        },
    }


def openapi_view() -> Response:
    spec = current_app.extensions.setdefault("receiver_openapi", None) or build_spec(current_app)
    current_app.extensions["receiver_openapi"] = spec
    return jsonify(spec)


def init_app(app: Flask) -> None:
    app.add_url_rule("/openapi.json", "openapi", openapi_view, methods=["GET"])
