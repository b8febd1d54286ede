"""Property tests of every parser of outside input (issue 14, items 1-3): the strict number and time parsers,
the read API's query parameters, the keyset cursor codec, the viewer's and the sprite path's numbers, and the
callback parser. Arbitrary values in: nothing but the domain's 4xx errors comes out, and whatever is accepted
round-trips."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from receiver.intake.parse import MAX_DEPTH, MAX_ITEMS, CallbackParseError, parse_callback
from receiver.strict import MAX_INT64, StrictError, parse_decimal_milli, parse_id, parse_int
from receiver.timeutil import MAX_TIME_MS, MIN_TIME_MS, ms_to_iso, parse_time_ms
from receiver.web.errors import ApiError
from receiver.web.health import MAX_SHEET, _sprite_numbers
from receiver.web.params import (
    MAX_LIMIT,
    cursor_key,
    make_cursor,
    parse_choice,
    parse_limit,
    parse_time,
    parse_width,
    read_cursor,
)
from receiver.web.viewer import MAX_PAGE, MAX_POLL_MS, MIN_POLL_MS, parse_page, parse_poll

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

# Text that hits the edges: ASCII and non-ASCII digits, signs, points, exponents, NaN, long runs.
HOSTILE = ["", "0", "-0", "-", "+1", " 1", "1 ", "１２", "١٢٣", "²", "NaN", "nan", "inf", "-inf", "1e999", "1e3",
           "0.5", "0x10", "1_000", "9" * 400, "9" * 5000, str(2**63), str(2**63 - 1), str(-(2**63)), "00001",
           "2026-11-28T12:00:00Z", "２０２６-11-28", "\x00", "\ud800"]
texts = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40),
                  st.integers(min_value=-(2**70), max_value=2**70).map(str),
                  st.text(alphabet="0123456789-.eE+", max_size=30))


def refused(fn: Any, *args: Any, status: int = 400, code: str | None = None) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    assert info.value.status == status
    if code is not None:
        assert info.value.code == code
    return info.value


# --- receiver/strict.py -------------------------------------------------------------------------------------

@FAST
@given(raw=texts, lo=st.integers(-(2**64), 2**64), span=st.integers(0, 2**65))
def test_parse_int_accepts_only_ascii_integers_in_range(raw: str, lo: int, span: int) -> None:
    hi = lo + span
    try:
        value = parse_int(raw, lo, hi)
    except StrictError:
        return
    assert lo <= value <= hi
    assert raw.isascii() and raw.lstrip("-").isdigit()
    assert parse_int(str(value), lo, hi) == value


@pytest.mark.parametrize("raw", ["１２", "١٢٣", "²", "1e3", "NaN", "1.0", "+1", " 1", "9" * 5000, str(2**63), ""])
def test_parse_id_refuses(raw: str) -> None:
    with pytest.raises(StrictError):
        parse_id(raw)


@FAST
@given(value=st.integers(1, MAX_INT64))
def test_ids_round_trip(value: int) -> None:
    assert parse_id(str(value)) == value


@FAST
@given(raw=texts)
@example(raw="0.5")
@example(raw="3600.000")
def test_decimal_milli(raw: str) -> None:
    try:
        value = parse_decimal_milli(raw, 500, 3_600_000)
    except StrictError:
        return
    assert 500 <= value <= 3_600_000
    assert parse_decimal_milli(f"{value // 1000}.{value % 1000:03d}", 500, 3_600_000) == value


# --- receiver/timeutil.py -----------------------------------------------------------------------------------

anything = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=True),
                     texts, st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.none()))


@FAST
@given(value=anything)
@example(value=float("nan"))
@example(value=float("inf"))
@example(value=2**63)
@example(value="9" * 5000)
@example(value="0001-01-01T00:00:00+23:00")
@example(value="9999-12-31T23:59:59-23:59")
def test_parse_time_ms_never_raises_and_accepted_times_round_trip(value: object) -> None:
    ms = parse_time_ms(value)
    if ms is None:
        return
    assert MIN_TIME_MS <= ms <= MAX_TIME_MS
    assert parse_time_ms(str(ms)) == ms
    assert parse_time_ms(ms_to_iso(ms)) == ms


@FAST
@given(ms=st.integers(MIN_TIME_MS, MAX_TIME_MS))
def test_every_time_in_range_round_trips(ms: int) -> None:
    assert parse_time_ms(ms) == ms == parse_time_ms(str(ms)) == parse_time_ms(ms_to_iso(ms))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e999, "9" * 5000, 2**63, str(2**63), "１２",
                                   "١٢٣", "²", "２０２６-11-28T12:00:00Z", MAX_TIME_MS + 1, MIN_TIME_MS - 1, True])
def test_times_refused(value: object) -> None:
    assert parse_time_ms(value) is None


# --- receiver/web/params.py: query parameters ---------------------------------------------------------------

@FAST
@given(raw=texts)
def test_time_parameter(raw: str) -> None:
    try:
        ms = parse_time("since", raw)
    except ApiError as e:
        assert (e.status, e.code) == (400, "InvalidParameter")
        return
    assert parse_time("since", str(ms)) == ms == parse_time("since", ms_to_iso(ms))


@FAST
@given(raw=texts)
def test_limit_parameter(raw: str) -> None:
    try:
        n = parse_limit(raw)
    except ApiError as e:
        assert (e.status, e.code) == (400, "InvalidParameter")
        return
    assert 1 <= n <= MAX_LIMIT and parse_limit(str(n)) == n


@FAST
@given(raw=texts, widths=st.lists(st.integers(1, 4000), min_size=1, max_size=4, unique=True))
def test_width_parameter(raw: str, widths: list[int]) -> None:
    try:
        w = parse_width(raw, tuple(widths))
    except ApiError as e:
        assert (e.status, e.code) == (400, "InvalidParameter")
        return
    assert w in widths and parse_width(str(w), tuple(widths)) == w


@FAST
@given(raw=texts)
def test_choice_parameter(raw: str) -> None:
    try:
        got = parse_choice("order", raw, ("asc", "desc"))
    except ApiError as e:
        assert (e.status, e.code) == (400, "InvalidParameter")
        return
    assert got == raw


# --- the keyset cursor codec --------------------------------------------------------------------------------

KEYS = [cursor_key(None), cursor_key("a secret")]  # None: the constant key anyone can mint cursors with
KIND_VALUES = {
    "id": st.integers(1, MAX_INT64),
    "time": st.integers(MIN_TIME_MS, MAX_TIME_MS),
    "job": st.text(min_size=1, max_size=128).filter(str.isprintable),
}
SHAPES = [("id",), ("time", "id"), ("job",)]


@FAST
@given(data=st.data(), key=st.sampled_from(KEYS), shape=st.sampled_from(SHAPES), scope=st.text(max_size=40))
def test_issued_cursors_round_trip(data: st.DataObject, key: bytes, shape: tuple[str, ...], scope: str) -> None:
    values = [data.draw(KIND_VALUES[k]) for k in shape]
    assert read_cursor(key, scope, make_cursor(key, scope, values), shape) == values


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=True), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=8,
)


def mint(key: bytes, payload: bytes) -> str:
    mac = hmac.new(key, payload, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


@FAST
@given(values=st.one_of(json_values, st.lists(json_values, max_size=3)), shape=st.sampled_from(SHAPES))
@example(values=[2**63], shape=("id",))
@example(values=[10**400], shape=("id",))
@example(values=[0], shape=("id",))
@example(values=[-1], shape=("id",))
@example(values=[MAX_TIME_MS + 1, 1], shape=("time", "id"))
@example(values=[1.0, 1], shape=("time", "id"))
@example(values=["job\x00"], shape=("job",))
@example(values=["\ud800"], shape=("job",))
def test_minted_cursors_hold_only_values_in_range(values: Any, shape: tuple[str, ...]) -> None:
    # Anyone can mint a cursor under the constant key: the tag proves nothing about what it holds.
    key = cursor_key(None)
    payload = json.dumps(["s", values], separators=(",", ":")).encode()
    try:
        got = read_cursor(key, "s", mint(key, payload), shape)
    except ApiError as e:
        assert (e.status, e.code) == (400, "InvalidCursor")
        return
    assert got == values
    for v, k in zip(got, shape, strict=True):
        if k == "id":
            assert type(v) is int and 1 <= v <= MAX_INT64
        elif k == "time":
            assert type(v) is int and MIN_TIME_MS <= v <= MAX_TIME_MS
        else:
            assert isinstance(v, str) and v.isprintable()


@FAST
@given(raw=st.one_of(texts, st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode())))
@example(raw=mint(cursor_key(None), b"[" * 500 + b"]" * 500))
@example(raw=mint(cursor_key(None), b'["s",[NaN]]'))
@example(raw=mint(cursor_key(None), b'["s",[1e999]]'))
@example(raw=mint(cursor_key(None), b"\xff\xfe"))
def test_arbitrary_cursors_are_refused_with_400(raw: str) -> None:
    try:
        read_cursor(cursor_key(None), "s", raw, ("id",))
    except ApiError as e:
        assert (e.status, e.code) == (400, "InvalidCursor")


# --- the viewer's ?poll= / ?page= and the sprite path -------------------------------------------------------

@FAST
@given(raw=texts)
@example(raw="9" * 400)
@example(raw="²")
def test_viewer_parameters(raw: str) -> None:
    for parse, lo, hi in ((parse_poll, MIN_POLL_MS, MAX_POLL_MS), (parse_page, 1, MAX_PAGE)):
        try:
            v = parse(raw)
        except ApiError as e:
            assert (e.status, e.code) == (400, "InvalidParameter")
            continue
        assert lo <= v <= hi
        assert parse(f"{v / 1000:.3f}" if parse is parse_poll else str(v)) == v


@FAST
@given(since=texts, until=texts, sheet=texts)
@example(since=str(2**64), until=str(2**64 + 1), sheet="0")
@example(since="١٢٣", until="1", sheet="0")
def test_sprite_path_numbers(since: str, until: str, sheet: str) -> None:
    try:
        s, u, n = _sprite_numbers(since, until, sheet)
    except ApiError as e:
        assert (e.status, e.code) == (400, "InvalidParameter")
        return
    assert 0 <= s <= MAX_TIME_MS and 0 <= u <= MAX_TIME_MS and 0 <= n <= MAX_SHEET
    assert _sprite_numbers(str(s), str(u), str(n)) == (s, u, n)


# --- the callback parser ------------------------------------------------------------------------------------

field_values = st.one_of(json_values, st.sampled_from(HOSTILE), st.integers(MIN_TIME_MS, MAX_TIME_MS))
FIELDS = ["JobId", "job_id", "OssObject", "OssBucket", "OssEndpoint", "CreateTime", "CreateTimestamp",
          "EventTime", "IsOverlay", "Unknown"]
items = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=6)
bodies = st.one_of(
    items,
    st.lists(items, max_size=4),
    st.builds(lambda env, body: {**env, "MessageBody": body}, items, items),
    st.builds(lambda env, body: {**env, "MessageBody": json.dumps(body)}, items, items),
    st.builds(lambda env, files: {**env, "FileList": files}, items, st.lists(items, max_size=4)),
    json_values,
)


def check_callback(body: bytes) -> None:
    try:
        accepted, skipped = parse_callback(body)
    except CallbackParseError as e:
        assert e.status in (400, 413) and e.code
        return
    assert len(accepted) + len(skipped) <= MAX_ITEMS
    for item in accepted:
        # What was accepted, written back as a flat callback, parses to the same item.
        again = {"JobId": item.job_id, "OssObject": item.oss_object, "OssBucket": item.oss_bucket,
                 "OssEndpoint": item.oss_endpoint, "CreateTimestamp": item.create_timestamp_ms,
                 "IsOverlay": item.is_overlay}
        (back,), _ = parse_callback(json.dumps(again).encode())
        assert (back.job_id, back.oss_object, back.oss_bucket, back.oss_endpoint, back.create_timestamp_ms,
                back.is_overlay) == (item.job_id, item.oss_object, item.oss_bucket, item.oss_endpoint,
                                     item.create_timestamp_ms, item.is_overlay)
        ts = item.create_timestamp_ms
        assert ts is None or MIN_TIME_MS <= ts <= MAX_TIME_MS
        json.loads(item.raw)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(doc=bodies)
def test_callback_parser_on_arbitrary_json(doc: Any) -> None:
    check_callback(json.dumps(doc).encode())


@FAST
@given(body=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_callback_parser_on_arbitrary_bytes(body: bytes) -> None:
    check_callback(body)


def deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize("body", [
    '{"JobId":"j","Unknown":' + deep(3000) + "}",
    '{"JobId":"j","Unknown":' + "[" * 3000 + "]" * 3000 + "}",
    json.dumps({"JobId": "j", "MessageBody": '{"x":' + deep(3000) + "}"}),
    '{"JobId":"j","Unknown":' + deep(MAX_DEPTH) + "}",
])
def test_deep_nesting_is_refused_not_a_recursion_error(body: str) -> None:
    with pytest.raises(CallbackParseError) as info:
        parse_callback(body.encode())
    assert (info.value.status, info.value.code) == (400, "TooDeep")


def test_nesting_up_to_the_limit_is_kept() -> None:
    (item,), _ = parse_callback(('{"JobId":"j","Unknown":' + deep(MAX_DEPTH - 2) + "}").encode())
    assert item.job_id == "j"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_invalid_json(value: str) -> None:
    with pytest.raises(CallbackParseError) as info:
        parse_callback(f'{{"JobId":"j","CreateTimestamp":{value}}}'.encode())
    assert info.value.code == "InvalidJson"


@pytest.mark.parametrize(("field", "value"), [
    ("CreateTimestamp", 1e999),
    ("CreateTimestamp", 2**63),
    ("CreateTimestamp", "9" * 5000),
    ("CreateTimestamp", "１２"),
    ("CreateTime", "٢٠٢٦-11-28T12:00:00Z"),
    ("CreateTime", "not a time"),
])
def test_a_value_that_is_not_a_time_counts_as_absent(field: str, value: object) -> None:
    # product.md refuses a callback only for bad JSON or no JobId: the item stays, without that time, and the
    # next field (then EventTime) is used; the raw body keeps what was sent.
    body = json.dumps({"JobId": "j", "OssObject": "a.jpg", field: value}).replace("Infinity", "1e999").encode()
    (item,), skipped = parse_callback(body)
    assert skipped == [] and item.create_timestamp_ms is None
    both = json.dumps({"JobId": "j", "OssObject": "a.jpg", field: value,
                       "CreateTime" if field == "CreateTimestamp" else "CreateTimestamp":
                       "2026-11-28T12:00:00Z" if field == "CreateTimestamp" else 1795867200000})
    (item,), _ = parse_callback(both.replace("Infinity", "1e999").encode())
    assert item.create_timestamp_ms == 1795867200000


def test_an_unreadable_event_time_is_ignored() -> None:
    (item,), skipped = parse_callback(json.dumps({"JobId": "j", "EventTime": "²", "OssObject": "a.jpg"}).encode())
    assert skipped == [] and item.create_timestamp_ms is None


@pytest.mark.parametrize("body", [
    {"JobId": "j", "FileList": [{"OssObject": f"{i}.jpg"} for i in range(MAX_ITEMS + 1)]},
    {"MessageBody": {"JobId": "j", "FileList": [{"OssObject": f"{i}.jpg"} for i in range(MAX_ITEMS + 1)]}},
    [{"JobId": "j", "OssObject": f"{i}.jpg"} for i in range(MAX_ITEMS + 1)],
    [{"JobId": "j", "FileList": [{"OssObject": f"{i}.jpg"} for i in range(60)]}] * 2,
])
def test_more_than_max_items_is_413(body: Any) -> None:
    with pytest.raises(CallbackParseError) as info:
        parse_callback(json.dumps(body).encode())
    assert (info.value.status, info.value.code) == (413, "TooManyItems")


def test_max_items_is_accepted() -> None:
    accepted, _ = parse_callback(json.dumps(
        {"JobId": "j", "FileList": [{"OssObject": f"{i}.jpg"} for i in range(MAX_ITEMS)]}).encode())
    assert len(accepted) == MAX_ITEMS
