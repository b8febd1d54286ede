"""GET /v1/stream over a real server (waitress, as `serve` runs it): messages as Server-Sent Events, filters,
resuming with Last-Event-ID, keepalives, the client bound, and the signed URL for browsers."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from receiver.config import Settings
from receiver.db import outbox
from receiver.db.models import Message, MessageType
from receiver.services import Services, services
from receiver.sim.frames import bad_inputs, make_frame
from receiver.timeutil import now_ms
from receiver.web import stream as stream_view
from receiver.worker.dispatch import drain
from tests.support.builders import BUCKET, JOB, OSS_ENDPOINT, build_app, callback_body, put_snapshot
from tests.support.sse import SseClient

JOB2 = "job-0002"


class Server:
    def __init__(self, app: Flask, threads: int = 8) -> None:
        from waitress.server import create_server

        self.server: Any = create_server(app, host="127.0.0.1", port=0, threads=threads)
        self.port = self.server.effective_port
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


def make_stack(settings: Settings, fake_ice: Any) -> tuple[Flask, Server]:
    fake_ice.add_job(JOB2, bucket=BUCKET, endpoint=OSS_ENDPOINT)
    app = build_app(settings)
    return app, Server(app)


@pytest.fixture
def stack(settings: Settings, fake_ice: Any) -> Iterator[tuple[Flask, Server]]:
    app, server = make_stack(settings, fake_ice)
    yield app, server
    services(app).close()  # ends open streams first, so waitress's threads are free to stop
    server.close()


def ingest(app: Flask, fake_oss: Any, fake_ice: Any, job: str = JOB, data: bytes | None = None) -> int:
    ms = now_ms()
    key = put_snapshot(fake_oss, fake_ice, ms, data or make_frame(ms % 997, width=160, height=90), job=job)
    assert app.test_client().post("/callbacks/live-snapshot", data=callback_body(key, ms, job=job)).status_code == 200
    drain(services(app))
    return ms


def message_ids(svc: Services) -> list[int]:
    with svc.sessions() as s:
        return list(s.execute(select(Message.id).order_by(Message.id)).scalars())


def test_each_new_message_arrives_as_an_event_with_its_id_type_and_body(stack, fake_oss, fake_ice):
    app, server = stack
    c = SseClient(server.port, "/v1/stream")
    try:
        assert c.status == 200 and c.headers["Content-Type"].startswith("text/event-stream")
        assert c.headers["Cache-Control"] == "no-cache"
        assert c.next_event(0.5) is None and "connected" in c.comments
        ingest(app, fake_oss, fake_ice)
        ev = c.next_event(5)
        assert ev is not None
        [mid] = message_ids(services(app))
        with services(app).sessions() as s:
            body = s.get(Message, mid).body
        assert ev["id"] == str(mid) and ev["event"] == "snapshot.created"
        assert ev["data"] == json.loads(body) and ev["data"]["data"]["job_id"] == JOB
        api = app.test_client().get(f"/v1/snapshots/{ev['data']['data']['id']}").get_json()
        assert ev["data"]["data"] == api
    finally:
        c.close()


def test_filters_by_job_and_type(stack, fake_oss, fake_ice):
    app, server = stack
    only_job2 = SseClient(server.port, f"/v1/stream?job_id={JOB2}")
    only_failed = SseClient(server.port, "/v1/stream?types=event.failed")
    try:
        ingest(app, fake_oss, fake_ice, JOB)
        ingest(app, fake_oss, fake_ice, JOB2)
        ingest(app, fake_oss, fake_ice, JOB, data=bad_inputs()["garbage"])
        [ev] = only_job2.events(2, 1)
        assert ev["event"] == "snapshot.created" and ev["data"]["data"]["job_id"] == JOB2
        [ev] = only_failed.events(2, 1)
        assert ev["event"] == "event.failed" and ev["data"]["data"]["status"] == "failed"
    finally:
        only_job2.close()
        only_failed.close()


@pytest.mark.parametrize(("query", "headers", "named"), [
    ("types=snapshot.created,nope", {}, "types"),
    ("types=,", {}, "types"),
    ("job_id=" + "x" * 129, {}, "job_id"),
    ("last_event_id=abc", {}, "last_event_id"),
    ("last_event_id=-1", {}, "last_event_id"),
    ("", {"Last-Event-ID": "1e9"}, "Last-Event-ID"),
])
def test_bad_parameters_get_400_with_the_error_object(stack, query, headers, named):
    app, _ = stack
    resp = app.test_client().get("/v1/stream?" + query, headers=headers)
    assert resp.status_code == 400
    err = resp.get_json()["error"]
    assert err["code"] == "InvalidParameter" and named in err["message"]


def test_a_client_resuming_with_last_event_id_gets_exactly_what_it_missed(stack, fake_oss, fake_ice):
    app, server = stack
    c = SseClient(server.port, "/v1/stream")
    ingest(app, fake_oss, fake_ice)
    [first] = c.events(1, 5)
    c.close()
    # Missed while away: two snapshots and a failure.
    ingest(app, fake_oss, fake_ice)
    ingest(app, fake_oss, fake_ice, JOB2)
    ingest(app, fake_oss, fake_ice, data=bad_inputs()["garbage"])
    missed = [i for i in message_ids(services(app)) if i > int(first["id"])]
    assert len(missed) == 3
    for how in ({"headers": {"Last-Event-ID": first["id"]}}, {"query": f"?last_event_id={first['id']}"}):
        c = SseClient(server.port, "/v1/stream" + how.get("query", ""), headers=how.get("headers"))
        try:
            got = c.events(10, 1)
            assert [int(e["id"]) for e in got] == missed
            assert [e["event"] for e in got][:3] == ["snapshot.created", "snapshot.created", "event.failed"]
            # And then live again: the next message follows, once.
            ingest(app, fake_oss, fake_ice)
            [live] = c.events(2, 1)
            assert int(live["id"]) == max(message_ids(services(app)))
            missed.append(int(live["id"]))  # the next resume from `first` gets it too
        finally:
            c.close()
    # Resuming with filters sends only the matching part of what was missed.
    c = SseClient(server.port, f"/v1/stream?job_id={JOB2}", headers={"Last-Event-ID": first["id"]})
    try:
        assert [e["data"]["data"]["job_id"] for e in c.events(10, 1)] == [JOB2]
    finally:
        c.close()


def test_resuming_reaches_back_one_hour_at_most(stack, fake_oss, fake_ice):
    app, server = stack
    svc = services(app)
    with svc.engine.begin() as conn:
        outbox.record(conn, MessageType.EVENT_FAILED, {"old": True}, job_id=JOB, account=None,
                      now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=61))
        outbox.record(conn, MessageType.EVENT_FAILED, {"old": False}, job_id=JOB, account=None,
                      now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=59))
    c = SseClient(server.port, "/v1/stream", headers={"Last-Event-ID": "0"})
    try:
        assert [e["data"]["data"] for e in c.events(5, 1)] == [{"old": False}]
    finally:
        c.close()


def test_an_idle_stream_gets_a_keepalive_comment(stack, monkeypatch):
    _, server = stack
    monkeypatch.setattr(stream_view, "KEEPALIVE_SECONDS", 0.2)
    c = SseClient(server.port, "/v1/stream")
    try:
        assert c.next_event(1) is None
        assert c.comments.count("keepalive") >= 2
    finally:
        c.close()


def test_streams_beyond_the_bound_get_503(settings, fake_ice, monkeypatch):
    monkeypatch.setattr(stream_view, "KEEPALIVE_SECONDS", 0.2)
    app, server = make_stack(settings.with_(stream_clients=1), fake_ice)
    first = SseClient(server.port, "/v1/stream")
    try:
        second = SseClient(server.port, "/v1/stream")
        assert second.status == 503 and second.json()["error"]["code"] == "TooManyStreams"
        assert second.headers["Retry-After"] == "30"
        second.close()
        first.close()
        # A closed stream frees its place once a write finds the client gone (here the next keepalive).
        deadline = time.monotonic() + 5
        while (third := SseClient(server.port, "/v1/stream")).status == 503:
            third.close()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert third.status == 200
        third.close()
    finally:
        services(app).close()
        server.close()


def test_with_api_keys_a_browser_uses_a_short_lived_signed_url(settings, fake_ice, fake_oss):
    app, server = make_stack(settings.with_(api_keys=("k-1",)), fake_ice)
    client = app.test_client()
    try:
        assert client.get("/v1/stream").status_code == 401
        assert client.get("/v1/stream/url").status_code == 401
        answer = client.get(f"/v1/stream/url?job_id={JOB}&types=snapshot.created",
                            headers={"Authorization": "Bearer k-1"}).get_json()
        assert answer["expires_in"] == 300
        assert answer["url"].startswith(f"/v1/stream?job_id={JOB}&types=snapshot.created&exp=")
        assert "sig=" in answer["url"]
        assert client.get(answer["url"].replace("sig=", "sig=0")).status_code == 403
        c = SseClient(server.port, answer["url"])
        try:
            assert c.status == 200
            ingest(app, fake_oss, fake_ice)
            [ev] = c.events(1, 5)
            assert ev["event"] == "snapshot.created"
        finally:
            c.close()
        # Without keys the URL is plain.
    finally:
        services(app).close()
        server.close()


def test_without_api_keys_the_stream_url_is_plain(stack):
    app, _ = stack
    assert app.test_client().get("/v1/stream/url?types=event.failed").get_json() == {
        "url": "/v1/stream?types=event.failed", "expires_in": None}


def test_a_confirmed_health_change_reaches_the_stream(stack, fake_oss, fake_ice):
    from receiver.ops.health_alerts import HealthAlerts

    app, server = stack
    c = SseClient(server.port, f"/v1/stream?types=stream.health_changed&job_id={JOB}")
    try:
        t0 = ingest(app, fake_oss, fake_ice)
        alerts = HealthAlerts(services(app))
        for after in (1_000, 11_000, 16_000):  # ok (recorded), then a silence seen twice: gap
            alerts.run_once(dt.datetime.fromtimestamp((t0 + after) / 1000, dt.UTC))
        [ev] = c.events(2, 2)
        assert ev["event"] == "stream.health_changed"
        assert {k: ev["data"]["data"][k] for k in ("job_id", "previous", "status")} == {
            "job_id": JOB, "previous": "ok", "status": "gap"}
    finally:
        c.close()
