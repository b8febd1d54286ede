"""Lenient parsing of ICE live snapshot callbacks into event items (product.md 3.1).

The live snapshot body is undocumented, so this accepts every plausible shape and keeps what it does not
understand in the raw body; nothing here decides anything, the pipeline verifies with ICE and OSS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from receiver.timeutil import parse_time_ms

log = logging.getLogger(__name__)

MAX_JOB_ID_LENGTH = 128
# Items (list entries and FileList entries together) one callback may carry: ICE sends one snapshot per
# callback; a batch above this is refused whole (413 TooManyItems), so one request cannot fan out into
# thousands of events, ICE calls and listings (docs/behaviour.md).
MAX_ITEMS = 100
# Nesting of arrays and objects in a body (a MessageBody string counts on its own): ICE's deepest shape is 4.
MAX_DEPTH = 32


class CallbackParseError(ValueError):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class EventItem:
    job_id: str
    identity: str  # sha256 hex of what makes this event "the same" across ICE retries
    oss_object: str | None
    oss_bucket: str | None
    oss_endpoint: str | None
    create_timestamp_ms: int | None
    is_overlay: bool | None
    raw: str  # canonical JSON of the item (with its envelope), kept for operators
    user_id: str | None = None  # the envelope's UserId: the account ICE says sent it
    account: str = "default"  # whose callback token it came through (set by the view)


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _fields(obj: dict[str, Any]) -> dict[str, Any]:
    """Case- and underscore-insensitive view; the first spelling wins when a body repeats a field."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(k, str):
            out.setdefault(_norm(k), v)
    return out


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    s = str(value).strip()
    return s or None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    if isinstance(value, int):
        return bool(value)
    return None


def _canonical(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (legal in JSON text, not in UTF-8): escape everything so it can be stored and hashed.
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return text


# Column sizes of the inbox, and what a database refuses in text (NUL on PostgreSQL, lone surrogates).
_UNSTORABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_FIELD_LIMITS = {"JobId": MAX_JOB_ID_LENGTH, "OssObject": 1023, "OssBucket": 255, "OssEndpoint": 255}


def _bad_field(name: str, value: str | None) -> CallbackParseError | None:
    if value is None:
        return None
    if len(value.encode("utf-8", "surrogatepass")) > _FIELD_LIMITS[name]:
        return CallbackParseError(f"Invalid{name}", f"{name} longer than {_FIELD_LIMITS[name]} bytes")
    if _UNSTORABLE.search(value):
        return CallbackParseError(f"Invalid{name}", f"{name} contains control characters or invalid Unicode")
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


# Built once: json.loads with any keyword argument builds a new decoder (and scanner) on every call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _too_deep(doc: Any) -> bool:
    """True when arrays and objects nest deeper than MAX_DEPTH; iterative, so no depth can overflow it."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth >= MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def _loads(text: str) -> Any:
    """json.loads without NaN/Infinity and with bounded nesting; every failure is CallbackParseError."""
    try:
        doc = _DECODER.decode(text)
    except RecursionError:
        # The decoder recurses per level; what it cannot nest, we would not have accepted anyway.
        raise CallbackParseError("TooDeep", f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise CallbackParseError("InvalidJson", f"body is not valid JSON: {e}") from None
    # Only a body with that many brackets can nest that deep: the walk is skipped for every ordinary callback.
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(doc):
        raise CallbackParseError("TooDeep", f"JSON nested deeper than {MAX_DEPTH} levels")
    return doc


def _message_body(fields: dict[str, Any]) -> dict[str, Any] | None:
    body = fields.get("messagebody")
    if isinstance(body, str):
        try:
            body = _loads(body)
        except CallbackParseError as e:
            if e.code == "TooDeep":
                raise
            return None
    return body if isinstance(body, dict) else None


def _file_time(merged: dict[str, Any]) -> int | None:
    """The file's CreateTimestamp, else its CreateTime, as Unix ms; None when neither reads as a time.

    Read strictly (one parser, years 1000-9999, no NaN or 5,000-digit numbers) but leniently used: product.md
    refuses a callback only for bad JSON or a missing JobId, so a value that is not a time counts as absent
    and the next field (then the envelope's EventTime) is used; the raw body keeps what was sent.
    """
    for key in ("createtimestamp", "createtime"):
        value = merged.get(key)
        if value is None or value == "":
            continue
        ms = parse_time_ms(value)
        if ms is not None:
            return ms
        log.info("callback time %s=%r is not a time; ignored", key, str(value)[:80])
    return None


def _item(merged: dict[str, Any], event_time: Any, raw_obj: Any) -> EventItem | CallbackParseError:
    job_id = _str(merged.get("jobid"))
    if job_id is None:
        return CallbackParseError("MissingJobId", "no JobId in the callback item")
    oss_object = _str(merged.get("ossobject"))
    oss_bucket, oss_endpoint = _str(merged.get("ossbucket")), _str(merged.get("ossendpoint"))
    for name, value in (("JobId", job_id), ("OssObject", oss_object), ("OssBucket", oss_bucket),
                        ("OssEndpoint", oss_endpoint)):
        if (bad := _bad_field(name, value)) is not None:
            return bad
    create_ts = _file_time(merged)
    moment = create_ts if create_ts is not None else parse_time_ms(event_time)
    if oss_object is None and moment is None:
        identity_src = "sha256:" + hashlib.sha256(_canonical(raw_obj).encode()).hexdigest()
    else:
        identity_src = _canonical({"job": job_id, "object": oss_object, "time": moment})
    return EventItem(
        job_id=job_id,
        identity=hashlib.sha256(identity_src.encode()).hexdigest(),
        oss_object=oss_object,
        oss_bucket=oss_bucket,
        oss_endpoint=oss_endpoint,
        create_timestamp_ms=create_ts,
        is_overlay=_bool(merged.get("isoverlay")),
        raw=_canonical(raw_obj),
        user_id=_str(merged.get("userid")),
    )


def _too_many(count: int) -> CallbackParseError:
    return CallbackParseError("TooManyItems", f"{count} items in one callback; at most {MAX_ITEMS}", 413)


def _items_of(obj: dict[str, Any], budget: int) -> list[EventItem | CallbackParseError]:
    top = _fields(obj)
    body = _message_body(top)
    inner = _fields(body) if body is not None else {}
    # Fields inside MessageBody win; top-level ones fill in (flat shape, or JobId beside a FileList).
    merged = {**top, **inner}
    merged.pop("messagebody", None)
    event_time = merged.get("eventtime")
    file_list = inner.get("filelist", top.get("filelist"))
    if isinstance(file_list, list) and file_list:
        if len(file_list) > budget:
            raise _too_many(MAX_ITEMS - budget + len(file_list))
        out: list[EventItem | CallbackParseError] = []
        context = {k: v for k, v in merged.items() if k != "filelist"}
        for f in file_list:
            if not isinstance(f, dict):
                out.append(CallbackParseError("InvalidBody", "FileList items must be objects"))
                continue
            out.append(_item({**context, **_fields(f)}, event_time, {"container": _strip_list(obj), "file": f}))
        return out
    return [_item(merged, event_time, obj)]


def _strip_list(obj: dict[str, Any]) -> dict[str, Any]:
    """The envelope without its FileList, so each file's raw record is not the whole batch."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if _norm(k) == "filelist":
            continue
        if _norm(k) == "messagebody" and isinstance(v, dict):
            v = {kk: vv for kk, vv in v.items() if _norm(kk) != "filelist"}
        out[k] = v
    return out


def parse_callback(body: bytes) -> tuple[list[EventItem], list[CallbackParseError]]:
    """Every event item in the body, and the items that could not be used (with why).

    Raises CallbackParseError when the body as a whole is unusable: not JSON, not an object or list, nested
    deeper than MAX_DEPTH, or more than MAX_ITEMS items (its ``status`` is then 413). Nothing else escapes.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CallbackParseError("InvalidJson", f"body is not valid JSON: {e}") from None
    doc = _loads(text)
    if isinstance(doc, dict):
        objs: list[Any] = [doc]
    elif isinstance(doc, list):
        if not doc:
            raise CallbackParseError("InvalidBody", "the body is an empty list")
        objs = doc
        if len(objs) > MAX_ITEMS:
            raise _too_many(len(objs))
    else:
        raise CallbackParseError("InvalidBody", "the body must be a JSON object or a list of objects")
    items: list[EventItem] = []
    errors: list[CallbackParseError] = []
    for obj in objs:
        if not isinstance(obj, dict):
            errors.append(CallbackParseError("InvalidBody", "list items must be JSON objects"))
            continue
        results = _items_of(obj, MAX_ITEMS - len(items) - len(errors))
        if len(items) + len(errors) + len(results) > MAX_ITEMS:
            raise _too_many(len(items) + len(errors) + len(results))
        for r in results:
            (errors if isinstance(r, CallbackParseError) else items).append(r)  # type: ignore[arg-type]
    return items, errors
