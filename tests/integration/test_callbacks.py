"""The callback endpoint (product.md 3.1): every body shape and every answer, through HTTP."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from receiver.config import Settings
from receiver.db.models import Event
from receiver.services import Services, services
from tests.support.builders import JOB, build_app

URL = "/callbacks/live-snapshot"


def events(svc: Services) -> list[Event]:
    with svc.sessions() as s:
        return list(s.execute(select(Event).order_by(Event.id)).scalars())


def post(client, body: bytes | str, path: str = URL, **kw):  # type: ignore[no-untyped-def]
    return client.post(path, data=body, **kw)


def assert_error(resp, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_envelope_is_recorded_and_nothing_slow_happens_before_the_answer(client, svc, fake_ice, fake_oss):
    body = {"EventType": "LiveSnapshotComplete", "UserId": 1, "EventTime": "2026-11-28T12:00:00Z",
            "MessageBody": {"JobId": JOB, "OssObject": f"snapshot/{JOB}/1796212805123.jpg",
                            "OssBucket": "testbucket", "OssEndpoint": "oss-cn-shanghai.aliyuncs.com",
                            "CreateTimestamp": 1796212805123, "IsOverlay": False, "Extra": {"kept": True}}}
    resp = post(client, json.dumps(body), content_type="application/json")
    assert resp.status_code == 200
    answer = resp.get_json()
    assert answer["status"] == "accepted" and len(answer["events"]) == 1
    [ev] = events(svc)
    assert str(ev.id) == answer["events"][0]
    assert (ev.job_id, ev.status, ev.origin) == (JOB, "pending", "callback")
    assert ev.oss_object == f"snapshot/{JOB}/1796212805123.jpg"
    assert (ev.oss_bucket, ev.create_timestamp_ms, ev.is_overlay) == ("testbucket", 1796212805123, False)
    assert '"kept":true' in (ev.raw_body or "")  # unknown fields kept, not rejected
    # No ICE call, no OSS call before the 200: the dispatcher is not running in this test.
    assert fake_ice.requests == [] and fake_oss.requests == []


@pytest.mark.parametrize(
    "body",
    [
        {"MessageBody": json.dumps({"JobId": JOB, "OssObject": "snapshot/x/1.jpg"})},  # MessageBody as a string
        {"JobId": JOB, "OssObject": "snapshot/x/1.jpg"},  # flat
        {"job_id": JOB, "OSS_OBJECT": "snapshot/x/1.jpg"},  # case and underscores ignored
        {"messagebody": {"JOBID": JOB, "ossObject": "snapshot/x/1.jpg"}},
    ],
)
def test_single_item_shapes(client, svc, body):
    resp = post(client, json.dumps(body), content_type="text/plain")  # any Content-Type
    assert resp.status_code == 200, resp.get_data(as_text=True)
    [ev] = events(svc)
    assert ev.job_id == JOB and ev.oss_object == "snapshot/x/1.jpg"


def test_batches_make_one_event_per_item(client, svc):
    batch = [{"JobId": JOB, "OssObject": f"snapshot/{JOB}/{i}.jpg"} for i in range(3)]
    assert post(client, json.dumps(batch)).get_json()["status"] == "accepted"
    in_body = {"EventTime": "2026-11-28T12:00:00Z",
               "MessageBody": {"JobId": "job-b", "FileList": [
                   {"OssObject": "snapshot/job-b/1.jpg", "CreateTimestamp": 1},
                   {"OssObject": "snapshot/job-b/2.jpg", "CreateTimestamp": 2}]}}
    answer = post(client, json.dumps(in_body)).get_json()
    assert len(answer["events"]) == 2
    top = {"JobId": "job-c", "FileList": [{"OssObject": "snapshot/job-c/1.jpg"}]}
    assert len(post(client, json.dumps(top)).get_json()["events"]) == 1
    got = sorted((e.job_id, e.oss_object) for e in events(svc))
    assert len(got) == 6
    assert ("job-b", "snapshot/job-b/2.jpg") in got and ("job-c", "snapshot/job-c/1.jpg") in got


def test_batch_with_an_unusable_item_keeps_the_good_ones(client, svc):
    resp = post(client, json.dumps([{"JobId": JOB, "OssObject": "a.jpg"}, {"OssObject": "no-job.jpg"}, 7]))
    assert resp.status_code == 200
    answer = resp.get_json()
    assert len(answer["events"]) == 1
    assert [s["code"] for s in answer["skipped"]] == ["MissingJobId", "InvalidBody"]
    assert len(events(svc)) == 1


def test_ice_retry_is_a_duplicate(client, svc):
    body = json.dumps({"JobId": JOB, "OssObject": "snapshot/job-0001/5.jpg", "CreateTimestamp": 5})
    first = post(client, body).get_json()
    second = post(client, body).get_json()
    assert first["status"] == "accepted" and second["status"] == "duplicate"
    assert first["events"] == second["events"]
    assert len(events(svc)) == 1


def test_identity_rules(client, svc):
    # Same object, another time: an overwrite object written again later is a new event.
    post(client, json.dumps({"JobId": JOB, "OssObject": "snapshot/job-0001.jpg", "CreateTimestamp": 1}))
    post(client, json.dumps({"JobId": JOB, "OssObject": "snapshot/job-0001.jpg", "CreateTimestamp": 2}))
    # CreateTime and the equivalent CreateTimestamp are the same moment.
    post(client, json.dumps({"JobId": JOB, "OssObject": "k.jpg", "CreateTime": "2026-11-28T12:00:00Z"}))
    dup = post(client, json.dumps({"JobId": JOB, "OssObject": "k.jpg", "CreateTimestamp": 1795867200000}))
    assert dup.get_json()["status"] == "duplicate"
    # With only a JobId, the canonical JSON decides: key order does not matter, content does.
    post(client, json.dumps({"JobId": JOB, "Note": "a", "X": 1}))
    assert post(client, json.dumps({"X": 1, "Note": "a", "JobId": JOB})).get_json()["status"] == "duplicate"
    assert post(client, json.dumps({"JobId": JOB, "Note": "b"})).get_json()["status"] == "accepted"
    assert len(events(svc)) == 5


def test_concurrent_delivery_of_one_event_makes_one_row(app: Flask, svc):
    body = json.dumps({"JobId": JOB, "OssObject": "snapshot/job-0001/9.jpg", "CreateTimestamp": 9})
    answers: list[dict] = []
    barrier = threading.Barrier(16)

    def send() -> None:
        c = app.test_client()
        barrier.wait()
        r = c.post(URL, data=body)
        assert r.status_code == 200
        answers.append(r.get_json())

    threads = [threading.Thread(target=send) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 16
    assert len({tuple(a["events"]) for a in answers}) == 1
    assert sum(a["status"] == "accepted" for a in answers) == 1
    with svc.sessions() as s:
        assert s.execute(select(func.count()).select_from(Event)).scalar_one() == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "InvalidJson"),
        (b"\xff\xfe\x00", "InvalidJson"),
        (b"42", "InvalidBody"),
        (b'"JobId"', "InvalidBody"),
        (b"[]", "InvalidBody"),
        (b"{}", "MissingJobId"),
        (b'{"JobId": ""}', "MissingJobId"),
        (b'{"JobId": null, "OssObject": "a.jpg"}', "MissingJobId"),
        (b'{"MessageBody": "{not json"}', "MissingJobId"),
        (b"[1, 2]", "InvalidBody"),
        (json.dumps({"JobId": "x" * 200}).encode(), "InvalidJobId"),
    ],
)
def test_bad_bodies_get_400_and_record_nothing(client, svc, body, code):
    assert_error(post(client, body), 400, code)
    assert events(svc) == []


def test_oversized_body_gets_413(client, svc):
    big = json.dumps({"JobId": JOB, "pad": "x" * 70000})
    assert_error(post(client, big), 413, "PayloadTooLarge")
    assert events(svc) == []


def test_unknown_paths_and_methods_use_the_error_object(client):
    assert_error(client.get(URL), 405, "MethodNotAllowed")
    assert_error(client.get("/nope"), 404, "NotFound")
    # No token configured: the token path does not exist.
    assert_error(post(client, b"{}", path=URL + "/sometoken"), 404, "NotFound")


def make_app(settings: Settings, **changes) -> Flask:  # type: ignore[no-untyped-def]
    return build_app(settings.with_(**changes))


def test_token_path(settings):
    app = make_app(settings, callback_token="s3cret-token")
    c = app.test_client()
    body = json.dumps({"JobId": JOB})
    assert_error(post(c, body), 404, "NotFound")
    assert_error(post(c, body, path=URL + "/wrong"), 401, "InvalidToken")
    assert post(c, body, path=URL + "/s3cret-token").status_code == 200
    # Order: token before size.
    assert_error(post(c, "x" * 70000, path=URL + "/wrong"), 401, "InvalidToken")
    services(app).close()


def sign(url: str, ts: int, key: str) -> dict[str, str]:
    return {"X-ICE-TIMESTAMP": str(ts),
            "X-ICE-SIGNATURE": hashlib.md5(f"{url}|{ts}|{key}".encode()).hexdigest()}


def test_signature_doc_vector():
    # ice.md 5.4: the documented example, with the key in lower case.
    assert sign("https://www.example.com/your/callback", 1519375990, "test123")["X-ICE-SIGNATURE"] == (
        "c72b60894140fa98920f1279219b7ed4")


def test_signature_checks(settings):
    app = make_app(settings, callback_auth_keys=("OldKey1", "NewKey2"), public_url="https://recv.example.com/")
    c = app.test_client()
    body = json.dumps({"JobId": JOB, "OssObject": "a.jpg"})
    url = "https://recv.example.com" + URL
    now = int(time.time())
    assert_error(post(c, body), 401, "MissingSignature")
    assert post(c, body, headers=sign(url, now, "OldKey1")).status_code == 200
    assert post(c, body, headers=sign(url, now, "NewKey2")).get_json()["status"] == "duplicate"  # rotation
    assert_error(post(c, body, headers=sign(url, now, "newkey2")), 401, "InvalidSignature")  # case-sensitive
    # The allowed skew is 300 s either way. The margins leave room for a slow machine: `now` was taken before
    # the first request (a timestamp 301 s ahead became 299.5 s ahead once a loaded CI runner took 1.5 s).
    assert_error(post(c, body, headers=sign(url, now - 330, "NewKey2")), 401, "StaleSignature")
    assert_error(post(c, body, headers=sign(url, int(time.time()) + 330, "NewKey2")), 401, "StaleSignature")
    assert post(c, body, headers=sign(url, now - 270, "NewKey2")).status_code == 200
    assert_error(post(c, body, headers={**sign(url, now, "NewKey2"), "X-ICE-TIMESTAMP": "abc"}), 401,
                 "InvalidSignature")
    # The incoming URL is not what is hashed when RECEIVER_PUBLIC_URL is set.
    assert_error(post(c, body, headers=sign("http://localhost" + URL, now, "NewKey2")), 401, "InvalidSignature")
    # With a query string: the URL with it and without it are both accepted.
    q = URL + "?src=ice"
    assert post(c, body, path=q, headers=sign(url + "?src=ice", now, "NewKey2")).status_code == 200
    assert post(c, body, path=q, headers=sign(url, now, "NewKey2")).status_code == 200
    # Order: size before signature, signature before parsing.
    assert_error(post(c, "x" * 70000), 413, "PayloadTooLarge")
    assert_error(post(c, b"not json"), 401, "MissingSignature")
    assert_error(post(c, b"not json", headers=sign(url, now, "OldKey1")), 400, "InvalidJson")
    services(app).close()


def test_signature_without_public_url_uses_the_request_url(settings):
    app = make_app(settings, callback_auth_keys=("K1abc",))
    c = app.test_client()
    now = int(time.time())
    resp = post(c, json.dumps({"JobId": JOB}), headers=sign("http://localhost" + URL, now, "K1abc"))
    assert resp.status_code == 200
    services(app).close()


def test_database_unavailable_gets_503(settings, tmp_path: Path):
    from sqlalchemy import create_engine

    from receiver.intake.inbox import GroupCommitter

    app = make_app(settings)
    svc: Services = services(app)
    # A database file that cannot be opened (its folder is a plain file) stands in for a database that is down.
    (tmp_path / "blocker").write_text("not a directory")
    svc.intake = GroupCommitter(create_engine(f"sqlite:///{tmp_path}/blocker/receiver.db"))
    resp = post(app.test_client(), json.dumps({"JobId": JOB}))
    assert_error(resp, 503, "DatabaseUnavailable")
    assert resp.headers["Retry-After"] == "1"
    svc.close()


def test_concurrent_distinct_callbacks_share_commits_but_keep_their_own_ids(app: Flask, svc):
    """The group commit writes many requests in one transaction; each answer still names its own event."""
    answers: dict[int, str] = {}
    barrier = threading.Barrier(24)

    def send(i: int) -> None:
        c = app.test_client()
        barrier.wait()
        r = c.post(URL, data=json.dumps({"JobId": JOB, "OssObject": f"snapshot/{JOB}/{i}.jpg"}))
        assert r.status_code == 200 and r.get_json()["status"] == "accepted"
        [answers[i]] = r.get_json()["events"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_id = {str(e.id): e.oss_object for e in events(svc)}
    assert len(by_id) == 24
    assert all(by_id[answers[i]] == f"snapshot/{JOB}/{i}.jpg" for i in range(24))


def test_intake_stores_timestamps_as_sqlalchemy_does_and_events_are_due(client, svc):
    """The SQLite fast path writes rows itself; what it stores must read back and compare like ORM rows."""
    from receiver.db.models import utcnow
    from receiver.worker.dispatch import due_event_ids

    def naive(t):  # type: ignore[no-untyped-def]
        return t.replace(tzinfo=None)  # SQLite gives naive UTC back, whichever way the row was written

    before = naive(utcnow())
    assert post(client, json.dumps({"JobId": JOB, "OssObject": "a.jpg"})).status_code == 200
    [ev] = events(svc)
    assert before <= naive(ev.received_at) == naive(ev.updated_at) == naive(ev.next_attempt_at) <= naive(utcnow())
    assert ev.key_from_ice is False
    with svc.engine.connect() as conn:
        [raw] = conn.exec_driver_sql("SELECT next_attempt_at FROM events").scalars()
    assert "+" not in raw and "T" not in raw  # SQLAlchemy's text form, which the due query compares as text
    assert ev.id in due_event_ids(svc)


def test_one_write_with_the_same_item_twice_records_it_once(svc):
    """ICE retrying while the first delivery is still in the group commit: the copy is a duplicate."""
    from receiver.intake.inbox import record_events
    from receiver.intake.parse import parse_callback

    [item], _ = parse_callback(json.dumps({"JobId": JOB, "OssObject": "a.jpg"}).encode())
    with svc.engine.begin() as conn:
        first = record_events(conn, [item, item])
        again = record_events(conn, [item])
    assert first.event_ids == [first.new_ids[0]] * 2 and len(first.new_ids) == 1
    assert again.event_ids == first.event_ids[:1] and again.new_ids == []
    assert len(events(svc)) == 1


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("OssBucket", "b" * 300, "InvalidOssBucket"),
        ("OssEndpoint", "e" * 300, "InvalidOssEndpoint"),
        ("OssObject", "k" * 1100, "InvalidOssObject"),
        ("OssObject", "a\x00b.jpg", "InvalidOssObject"),
        ("JobId", "job\x00x", "InvalidJobId"),
        ("JobId", "job\ud800", "InvalidJobId"),
    ],
)
def test_unstorable_fields_skip_the_item_and_keep_its_neighbours(client, svc, field, value, code):
    """Values no database column can hold are refused per item, never as a 500 that loses the batch."""
    bad = {"JobId": JOB, "OssObject": "snapshot/job-0001/1.jpg", field: value}
    good = {"JobId": JOB, "OssObject": "snapshot/job-0001/2.jpg"}
    resp = post(client, json.dumps([bad, good]))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert [s["code"] for s in resp.get_json()["skipped"]] == [code]
    assert [e.oss_object for e in events(svc)] == ["snapshot/job-0001/2.jpg"]
    assert_error(post(client, json.dumps(bad)), 400, code)


def test_nul_in_read_parameters_is_a_400(client):
    assert_error(client.get("/v1/events?job_id=a%00b"), 400, "InvalidParameter")
    assert_error(client.get("/v1/jobs/a%00b/snapshots"), 400, "InvalidParameter")


def test_stored_times_come_back_aware_in_utc(client, svc):
    """SQLite keeps no zone: a naive value read back would be taken as local time by .timestamp()."""
    post(client, json.dumps({"JobId": JOB, "OssObject": "a.jpg"}))
    [ev] = events(svc)
    assert ev.received_at.utcoffset() is not None and ev.received_at.utcoffset().total_seconds() == 0
    assert abs(ev.received_at.timestamp() - time.time()) < 60


def test_flask_views_answer_like_the_wsgi_route(settings):
    """FlaskRoutingBypass answers POSTs before Flask; the blueprint's views (reached when the layer is left out)
    give byte-identical answers, and each callback is counted once either way."""
    from werkzeug.test import Client

    from receiver.intake.view import FlaskRoutingBypass

    app = make_app(settings, callback_token="tok")
    svc: Services = services(app)
    assert isinstance(app.wsgi_app, FlaskRoutingBypass)
    routed, bare = app.test_client(), Client(app.wsgi_app.app)
    cases = [
        (URL + "/tok", json.dumps({"JobId": JOB, "OssObject": "a.jpg"})),  # accepted (routed), duplicate (bare)
        (URL + "/tok", "not json"),
        (URL + "/wrong", "{}"),
        (URL, "{}"),
        (URL + "/tok", "x" * 70000),
    ]
    for path, body in cases:
        a, b = routed.post(path, data=body), bare.post(path, data=body)
        assert a.status_code == b.status_code and a.headers["Content-Type"] == b.headers["Content-Type"], path
        if a.get_json().get("status") == "accepted":
            assert b.get_json()["status"] == "duplicate" and b.get_json()["events"] == a.get_json()["events"]
        else:
            assert a.data == b.data, (path, a.data, b.data)
    assert [e.origin for e in events(svc)] == ["callback"]
    counted = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'receiver_callbacks_total{answer="InvalidJson",status="400"} 2.0' in counted
    assert 'receiver_callbacks_total{answer="InvalidToken",status="401"} 2.0' in counted
    svc.close()


def test_route_edges(settings):
    # A UTF-8 token arrives percent-encoded and is compared byte for byte; other methods and near-miss paths
    # fall through to Flask (405/404 in the same error object); a declared length shorter than the body
    # bounds what is read, so the JSON is cut and refused rather than read past its end.
    from urllib.parse import quote

    app = make_app(settings, callback_token="töken-ü")
    c = app.test_client()
    body = json.dumps({"JobId": JOB})
    assert post(c, body, path=URL + "/" + quote("töken-ü")).status_code == 200
    assert_error(post(c, body, path=URL + "/" + quote("token-u")), 401, "InvalidToken")
    assert_error(c.get(URL + "/" + quote("töken-ü")), 405, "MethodNotAllowed")
    assert_error(post(c, body, path=URL + "/a/b"), 404, "NotFound")
    assert_error(post(c, body, path="/callbacks/other"), 404, "NotFound")
    cut = c.post(URL + "/" + quote("töken-ü"), data=body, environ_overrides={"CONTENT_LENGTH": "5"})
    assert_error(cut, 400, "InvalidJson")
    services(app).close()


def test_a_database_locked_past_the_intake_timeout_gets_503_and_the_retry_is_accepted(client, svc):
    # Another writer holds SQLite's write lock: the callback waits at most the intake's 2.5 s busy timeout
    # (ICE gives up after 3 s), answers 503 with Retry-After, and records nothing; ICE's retry then lands.
    import sqlite3

    body = json.dumps({"JobId": JOB, "OssObject": "a.jpg"})
    blocker = sqlite3.connect(svc.engine.url.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        resp = post(client, body)
        waited = time.monotonic() - t0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert_error(resp, 503, "DatabaseUnavailable")
    assert resp.headers["Retry-After"] == "1" and 2.0 < waited < 10
    assert events(svc) == []
    assert post(client, body).get_json()["status"] == "accepted"


def test_signature_over_a_utf8_path_and_odd_timestamps(settings):
    # Without RECEIVER_PUBLIC_URL the signed URL is the request's own, with its path decoded from UTF-8 (as
    # Flask's base_url); a timestamp of non-ASCII digits is an invalid signature (401), not a 500.
    from urllib.parse import quote

    app = make_app(settings, callback_auth_keys=("K1abc",), callback_token="café")
    c = app.test_client()
    now = int(time.time())
    body = json.dumps({"JobId": JOB})
    path = URL + "/" + quote("café")
    assert post(c, body, path=path, headers=sign("http://localhost" + URL + "/café", now, "K1abc")).status_code == 200
    odd = {**sign("http://localhost" + URL + "/café", now, "K1abc"), "X-ICE-TIMESTAMP": "²"}
    assert_error(post(c, body, path=path, headers=odd), 401, "InvalidSignature")
    services(app).close()


def test_a_body_with_no_length_and_no_end_is_empty(client, svc):
    # No Content-Length and a server that does not mark the stream's end: nothing is read (a read could wait
    # for the client to hang up), so the callback is a 400 at once.
    resp = client.post(URL, data=json.dumps({"JobId": JOB}), environ_overrides={"CONTENT_LENGTH": ""})
    assert_error(resp, 400, "InvalidJson")
    assert events(svc) == []


def test_reads_in_progress_do_not_hold_up_callbacks(client, svc):
    # SQLite: a read (an API page, a metrics scrape, the sweeper's scan) runs in a deferred transaction, so a
    # callback commits while it is still open; writers keep BEGIN IMMEDIATE. Before, a read held the write
    # lock and the callback waited 2.5 s for a 503.
    from receiver.db.models import Snapshot

    with svc.readers() as s:
        s.execute(select(Snapshot.id).limit(1)).all()  # the read's transaction is open
        t0 = time.monotonic()
        resp = post(client, json.dumps({"JobId": JOB, "OssObject": "a.jpg"}))
        waited = time.monotonic() - t0
    assert resp.status_code == 200 and resp.get_json()["status"] == "accepted"
    assert waited < 1.0
    # The API's own reads go through the same path.
    with svc.readers() as s:
        s.execute(select(Snapshot.id).limit(1)).all()
        assert client.get("/v1/jobs").status_code == 200
        assert post(client, json.dumps({"JobId": JOB, "OssObject": "b.jpg"})).status_code == 200
