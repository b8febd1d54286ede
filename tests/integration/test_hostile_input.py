"""Hostile input over HTTP (issue 14, items 1-3): every example of the attack answers its 4xx with the error
object and records nothing; none of them is a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from sqlalchemy import func, select

from receiver.db.models import Event
from receiver.intake.parse import MAX_ITEMS
from receiver.services import Services, services
from receiver.web.params import cursor_key
from tests.support.api import add_job, add_snapshot
from tests.support.builders import JOB, build_app

URL = "/callbacks/live-snapshot"
T0 = 1796212805123


def assert_error(resp, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.get_data(as_text=True)[:300]
    body = resp.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def recorded(svc: Services) -> int:
    with svc.sessions() as s:
        return s.execute(select(func.count()).select_from(Event)).scalar_one()


# --- item 1: numbers in callbacks -------------------------------------------------------------------------

def _item(ts: str) -> str:
    return f'{{"JobId":"{JOB}","OssObject":"snapshot/{JOB}/1.jpg","CreateTimestamp":{ts}}}'


@pytest.mark.parametrize("body", [_item("NaN"), _item("Infinity"), _item("9" * 5000)])
def test_callback_numbers_json_cannot_hold_are_400_and_record_nothing(client, svc, body):
    # NaN/Infinity are not JSON (RFC 8259); 5,000 digits are beyond Python's int-size guard.
    assert_error(client.post(URL, data=body), 400, "InvalidJson")
    assert recorded(svc) == 0


@pytest.mark.parametrize("body", [
    _item("1e999"), _item('"' + "9" * 5000 + '"'), _item("9" * 4000), _item(str(2**63)), _item('"１２"'),
    _item('"١٢٣"'), _item('"²"'),
    json.dumps({"JobId": JOB, "OssObject": f"snapshot/{JOB}/1.jpg", "CreateTime": "２０２６-11-28T12:00:00Z"}),
    json.dumps({"JobId": JOB, "OssObject": f"snapshot/{JOB}/1.jpg", "CreateTime": "9999-12-31T23:59:59-23:59"}),
])
def test_callback_times_out_of_kind_are_ignored_and_the_item_recorded(client, svc, body):
    # The contract refuses only bad JSON and a missing JobId: the event is recorded without that time (the raw
    # body keeps it), and its object is still verified against the job as any other.
    answer = client.post(URL, data=body)
    assert answer.status_code == 200 and answer.get_json()["status"] == "accepted"
    with svc.sessions() as s:
        (ev,) = s.execute(select(Event)).scalars()
    assert ev.create_timestamp_ms is None and ev.raw_body is not None


def test_a_batch_keeps_every_item_and_ignores_a_bad_time(client, svc):
    body = json.dumps({"JobId": JOB, "FileList": [{"OssObject": "a.jpg", "CreateTimestamp": 2**63},
                                                  {"OssObject": "b.jpg", "CreateTimestamp": T0}]})
    answer = client.post(URL, data=body).get_json()
    assert answer["status"] == "accepted" and len(answer["events"]) == 2 and "skipped" not in answer


@pytest.mark.parametrize("ts", ["9" * 5000, "9" * 400, str(2**63), "１２", "²", "-1", "1e3", " "])
def test_x_ice_timestamp_out_of_kind_is_401(settings, ts):
    app = build_app(settings.with_(callback_auth_keys=("K1abc",)))
    svc = services(app)
    try:
        resp = app.test_client().post(URL, data=json.dumps({"JobId": JOB}),
                                      headers={"X-ICE-TIMESTAMP": ts, "X-ICE-SIGNATURE": "0" * 32})
        assert_error(resp, 401, "MissingSignature" if ts == " " else "InvalidSignature")
        assert recorded(svc) == 0
        now = str(int(time.time()))
        sig = hashlib.md5(f"http://localhost{URL}|{now}|K1abc".encode()).hexdigest()
        ok = app.test_client().post(URL, data=json.dumps({"JobId": JOB}),
                                    headers={"X-ICE-TIMESTAMP": now, "X-ICE-SIGNATURE": sig})
        assert ok.status_code == 200
    finally:
        svc.close()


# --- item 1: query parameters, cursors, paths ---------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "since=１２", "until=١٢٣", "since=²", "since=" + "9" * 5000, "since=NaN", "since=1e999", f"until={2**63}",
    "limit=²", "limit=" + "9" * 400, "limit=１２", "limit=1e3", "limit=NaN",
])
def test_hostile_query_parameters_are_400(client, svc, query):
    add_job(svc)
    assert_error(client.get(f"/v1/jobs/{JOB}/snapshots?{query}"), 400, "InvalidParameter")


@pytest.mark.parametrize("query", ["time=" + "9" * 5000, "time=NaN", "time=１２"])
def test_hostile_nearest_time_is_400(client, svc, query):
    add_job(svc)
    assert_error(client.get(f"/v1/jobs/{JOB}/snapshots/nearest?{query}"), 400, "InvalidParameter")


@pytest.mark.parametrize("width", ["²", "9" * 5000, "１６０", "160.0", str(2**64)])
def test_hostile_width_is_400(client, svc, width):
    add_job(svc)
    sid = add_snapshot(svc, T0)
    assert_error(client.get(f"/v1/snapshots/{sid}/thumbnail?width={width}"), 400, "InvalidParameter")


@pytest.mark.parametrize("sid", [str(2**63), "9" * 5000, "١٢٣", "²", "0"])
def test_hostile_snapshot_ids_are_404(client, sid):
    for path in (f"/v1/snapshots/{sid}", f"/v1/snapshots/{sid}/thumbnail", f"/v1/snapshots/{sid}/original"):
        assert_error(client.get(path), 404, "NotFound")


def _mint(scope: str, values: object) -> str:
    # What anyone can do when no signing key is configured: the key is a constant in the source.
    payload = json.dumps([scope, values], separators=(",", ":")).encode()
    mac = hmac.new(cursor_key(None), payload, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


@pytest.mark.parametrize(("path", "scope", "values"), [
    ("/v1/events", "events:None:None", [2**63]),
    ("/v1/events", "events:None:None", [10**400]),
    ("/v1/events", "events:None:None", [-1]),
    ("/v1/events", "events:None:None", [1.5]),
    (f"/v1/jobs/{JOB}/snapshots", f"snapshots:{JOB}:desc", [T0, 2**63]),
    (f"/v1/jobs/{JOB}/snapshots", f"snapshots:{JOB}:desc", [2**63, 1]),
    (f"/v1/jobs/{JOB}/snapshots", f"snapshots:{JOB}:desc", [-(2**70), 1]),
    ("/v1/jobs", "jobs", ["job\x00"]),
    ("/v1/jobs", "jobs", ["x" * 500]),
])
def test_minted_cursors_with_out_of_range_values_are_400(client, svc, path, scope, values):
    add_job(svc)
    assert_error(client.get(path, query_string={"cursor": _mint(scope, values)}), 400, "InvalidCursor")


def test_a_minted_cursor_in_range_still_pages(client, svc):
    add_job(svc)
    resp = client.get("/v1/events", query_string={"cursor": _mint("events:None:None", [2**63 - 1])})
    assert resp.status_code == 200 and resp.get_json()["items"] == []


@pytest.mark.parametrize("name", [
    f"{2**64}-{2**64 + 1}-0", f"0-{2**64}-0", f"{T0}-{T0 + 1000}-{2**64}", "١٢٣-٤٥٦-0", "²-3-0",
    "9" * 5000 + "-1-0", "1-2-x", "-1-2-0", f"{T0}-{T0 + 1}-1e3",
])
def test_hostile_sprite_paths_are_400(client, svc, name):
    add_job(svc)
    assert_error(client.get(f"/v1/jobs/{JOB}/storyboard/{name}.jpg"), 400, "InvalidParameter")


def test_a_sprite_path_in_range_with_no_sheet_is_404(client, svc):
    add_job(svc)
    assert_error(client.get(f"/v1/jobs/{JOB}/storyboard/{T0}-{T0 + 1000}-5.jpg"), 404, "NotFound")


@pytest.mark.parametrize("query", [
    "poll=" + "9" * 400, "poll=²", "poll=NaN", "poll=1e999", "poll=0.1", "poll=１", "poll=inf", "poll=0.0001",
    "page=" + "9" * 400, "page=²", "page=0", "page=１２", "page=1001", "page=1.5",
])
def test_hostile_viewer_parameters_are_400(client, query):
    for path in ("/", f"/jobs/{JOB}"):
        assert_error(client.get(f"{path}?{query}"), 400, "InvalidParameter")


def test_viewer_parameters_in_range_reach_the_page(client):
    html = client.get("/?poll=0.5&page=30").get_data(as_text=True)
    assert '"poll_ms": 500' in html and '"page_size": 30' in html
    html = client.get(f"/jobs/{JOB}").get_data(as_text=True)
    assert '"poll_ms": 5000' in html and '"page_size": 60' in html


# --- item 2: deep nesting -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    f'{{"JobId":"{JOB}","Unknown":' + '{"a":' * 3000 + "1" + "}" * 3000 + "}",
    f'{{"JobId":"{JOB}","Unknown":' + "[" * 3000 + "]" * 3000 + "}",
    json.dumps({"JobId": JOB, "MessageBody": '{"x":' + "[" * 3000 + "]" * 3000 + "}"}),
    "[" * 20000 + "]" * 20000,
])
def test_deep_nesting_under_the_size_limit_is_400(client, svc, body):
    assert len(body) < 65536
    assert_error(client.post(URL, data=body), 400, "TooDeep")
    assert recorded(svc) == 0


# --- item 3: items per callback -----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"JobId": JOB, "FileList": [{"OssObject": f"snapshot/{JOB}/{i}.jpg"} for i in range(6000)]},
    {"MessageBody": {"JobId": JOB, "FileList": [{"OssObject": f"{i}.jpg"} for i in range(MAX_ITEMS + 1)]}},
    [{"JobId": JOB, "OssObject": f"{i}.jpg"} for i in range(MAX_ITEMS + 1)],
])
def test_more_items_than_the_cap_is_413_and_records_nothing(settings, body):
    app = build_app(settings.with_(max_callback_bytes=1_000_000))
    svc = services(app)
    try:
        assert_error(app.test_client().post(URL, data=json.dumps(body)), 413, "TooManyItems")
        assert recorded(svc) == 0
    finally:
        svc.close()


def test_the_cap_itself_is_accepted(client, svc):
    body = {"JobId": "job-unknown", "FileList": [{"OssObject": f"{i}.jpg"} for i in range(MAX_ITEMS)]}
    answer = client.post(URL, data=json.dumps(body)).get_json()
    assert answer["status"] == "accepted" and len(answer["events"]) == MAX_ITEMS
