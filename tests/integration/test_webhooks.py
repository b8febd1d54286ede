"""Webhooks end to end in one process: callbacks -> snapshots -> messages -> deliveries -> a real subscriber on
loopback that verifies every request with the standardwebhooks package."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, insert, select, update

from receiver.adapters.webhooks import WebhookSender
from receiver.db.models import Delivery, Message, Subscription, utcnow
from receiver.ops.maintenance import Maintenance
from receiver.ops.push_retention import prune_push
from receiver.services import Services
from receiver.sim.frames import bad_inputs, make_frame
from receiver.worker.deliveries import DeliveryEngine
from receiver.worker.dispatch import drain
from receiver.worker.webhooks import deliver, due_deliveries, fan_out
from tests.support.builders import JOB, callback_body, put_snapshot
from tests.support.subscriber import Subscriber

URL = "/callbacks/live-snapshot"
T0 = 1796212805123
ALL = ["snapshot.created", "stream.health_changed", "event.failed"]


@pytest.fixture
def settings(settings):
    return settings.with_(webhook_allow_private=True, webhook_retry_schedule=(0.2, 0.2, 0.5))


@pytest.fixture
def hooks() -> Iterator[Subscriber]:
    with Subscriber() as s:
        yield s


def subscribe(client, hooks: Subscriber, path: str, **fields) -> dict:
    body = {"url": hooks.url + path, "events": ALL, **fields}
    r = client.post("/v1/subscriptions", json=body)
    assert r.status_code == 201, r.get_json()
    sub = r.get_json()
    hooks.secrets[path] = sub["secret"]
    return sub


def pumper(svc: Services, sender: WebhookSender | None = None):
    sender = sender or WebhookSender(allow_private=True)

    def pump() -> None:
        while fan_out(svc):
            pass
        for row in due_deliveries(svc, 100):
            deliver(svc, sender, row.id)
    return pump


def snapshot(client, svc, fake_oss, fake_ice, ms: int, seed: int = 1, job: str = JOB) -> None:
    key = put_snapshot(fake_oss, fake_ice, ms, make_frame(seed=seed, kind="photo"), job=job)
    assert client.post(URL, data=callback_body(key, ms, job=job)).status_code == 200
    drain(svc)


def message_ids(svc: Services) -> list[str]:
    with svc.readers() as s:
        return list(s.execute(select(Message.message_id).order_by(Message.id)).scalars())


def test_one_valid_signed_message_per_snapshot(client, svc, fake_ice, fake_oss, hooks):
    sub = subscribe(client, hooks, "/all")
    assert sub["secret"].startswith("whsec_") and sub["status"] == "enabled"
    for i in range(3):
        snapshot(client, svc, fake_oss, fake_ice, T0 + i * 5000, seed=i + 1)
    # The same callback again: no new snapshot, so no new message.
    snapshot(client, svc, fake_oss, fake_ice, T0, seed=1)
    assert hooks.wait(lambda: len(hooks.at("/all")) >= 3, pump=pumper(svc))
    got = hooks.at("/all")
    assert len(got) == 3 and all(r.verified for r in got)
    assert [r.webhook_id for r in got] == message_ids(svc)
    snaps = client.get(f"/v1/jobs/{JOB}/snapshots?order=asc").get_json()["items"]
    assert [r.payload["data"] for r in got] == snaps
    assert all(r.payload["type"] == "snapshot.created" and r.headers["content-type"] == "application/json"
               for r in got)
    items = client.get(f"/v1/subscriptions/{sub['id']}/deliveries").get_json()["items"]
    assert len(items) == 3
    assert set(items[0]) == {"id", "message_id", "type", "status", "attempts", "last_status_code", "last_error",
                             "next_attempt_at", "delivered_at"}
    assert all(d["status"] == "delivered" and d["attempts"] == 1 and d["last_status_code"] == 204
               and d["next_attempt_at"] is None and d["delivered_at"] for d in items)


def test_a_failing_subscriber_that_recovers_gets_every_message_with_the_same_webhook_id(
        client, svc, fake_ice, fake_oss, hooks):
    hooks.answers["/flaky"] = [500, 503, 204]
    sub = subscribe(client, hooks, "/flaky")
    snapshot(client, svc, fake_oss, fake_ice, T0)
    assert hooks.wait(lambda: any(r.answered == 204 for r in hooks.at("/flaky")), pump=pumper(svc))
    got = hooks.at("/flaky")
    assert [r.answered for r in got] == [500, 503, 204]
    assert len({r.webhook_id for r in got}) == 1 and all(r.verified for r in got)
    [d] = client.get(f"/v1/subscriptions/{sub['id']}/deliveries").get_json()["items"]
    assert (d["status"], d["attempts"], d["last_status_code"], d["last_error"]) == ("delivered", 3, 204, None)


def test_after_the_schedule_a_delivery_is_failed_and_replay_sends_it_again(client, svc, fake_ice, fake_oss, hooks):
    hooks.answers["/down"] = [500, 500, 500, 500, 204]
    sub = subscribe(client, hooks, "/down")
    snapshot(client, svc, fake_oss, fake_ice, T0)
    pump = pumper(svc)
    failed = f"/v1/subscriptions/{sub['id']}/deliveries?status=failed"
    assert hooks.wait(lambda: len(client.get(failed).get_json()["items"]) == 1, pump=pump)
    [d] = client.get(failed).get_json()["items"]
    assert (d["attempts"], d["last_status_code"], d["last_error"]) == (4, 500, "HTTP 500")
    assert len(hooks.at("/down")) == 4
    r = client.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": T0 - 10**9})
    assert r.status_code == 202 and r.get_json()["deliveries"] == 1
    assert hooks.wait(lambda: any(x.answered == 204 for x in hooks.at("/down")), pump=pump)
    assert len({x.webhook_id for x in hooks.at("/down")}) == 1  # same message id on the replay
    statuses = sorted(x["status"] for x in client.get(f"/v1/subscriptions/{sub['id']}/deliveries")
                      .get_json()["items"])
    assert statuses == ["delivered", "failed"]


def test_replay_since_a_time_sends_only_messages_from_then(client, svc, fake_ice, fake_oss, hooks):
    sub = subscribe(client, hooks, "/r")
    snapshot(client, svc, fake_oss, fake_ice, T0)
    pump = pumper(svc)
    assert hooks.wait(lambda: len(hooks.at("/r")) == 1, pump=pump)
    later = utcnow().isoformat()
    r = client.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": later})
    assert r.status_code == 202 and r.get_json()["deliveries"] == 0
    r = client.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": "2020-01-01T00:00:00Z"})
    assert r.get_json()["deliveries"] == 1
    assert hooks.wait(lambda: len(hooks.at("/r")) == 2, pump=pump)
    for bad, code in (({}, "MissingParameter"), ({"since": "yesterday"}, "InvalidParameter"),
                      ({"since": 1, "x": 2}, "InvalidParameter")):
        r = client.post(f"/v1/subscriptions/{sub['id']}/replay", json=bad)
        assert r.status_code == 400 and r.get_json()["error"]["code"] == code


def test_filters_by_job_and_type(client, svc, fake_ice, fake_oss, hooks):
    subscribe(client, hooks, "/mine", events=["snapshot.created"], job_ids=[JOB])
    subscribe(client, hooks, "/other", job_ids=["job-other"])
    subscribe(client, hooks, "/failures", events=["event.failed"])
    subscribe(client, hooks, "/acct", accounts=["someone-else"])
    snapshot(client, svc, fake_oss, fake_ice, T0)
    key = put_snapshot(fake_oss, fake_ice, T0 + 5000, bad_inputs()["garbage"])
    assert client.post(URL, data=callback_body(key, T0 + 5000)).status_code == 200
    drain(svc)
    pump = pumper(svc)
    assert hooks.wait(lambda: len(hooks.at("/mine")) == 1 and len(hooks.at("/failures")) == 1, pump=pump)
    pump()
    assert [r.payload["type"] for r in hooks.at("/mine")] == ["snapshot.created"]
    [failure] = hooks.at("/failures")
    assert failure.payload["type"] == "event.failed" and failure.payload["data"]["status"] == "failed"
    assert hooks.at("/other") == [] and hooks.at("/acct") == []


def test_delete_stops_deliveries(client, svc, fake_ice, fake_oss, hooks):
    sub = subscribe(client, hooks, "/gone")
    snapshot(client, svc, fake_oss, fake_ice, T0)
    assert fan_out(svc) == 1  # a pending delivery exists
    assert client.delete(f"/v1/subscriptions/{sub['id']}").status_code == 204
    pumper(svc)()
    assert hooks.at("/gone") == []
    for method, path in (("get", ""), ("delete", ""), ("get", "/deliveries")):
        r = getattr(client, method)(f"/v1/subscriptions/{sub['id']}{path}")
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "NotFound"
    with svc.readers() as s:
        assert s.execute(select(Delivery)).first() is None


def test_redirects_are_not_followed_and_count_as_failures(client, svc, fake_ice, fake_oss, hooks):
    hooks.answers["/moved"] = [302, 204]
    sub = subscribe(client, hooks, "/moved")
    snapshot(client, svc, fake_oss, fake_ice, T0)
    pump = pumper(svc)
    assert hooks.wait(lambda: len(hooks.at("/moved")) == 2, pump=pump)
    assert [r.path for r in hooks.received] == ["/moved", "/moved"]
    [d] = client.get(f"/v1/subscriptions/{sub['id']}/deliveries").get_json()["items"]
    assert d["status"] == "delivered" and d["attempts"] == 2


def test_a_slow_subscriber_attempt_ends_at_the_timeout(client, svc, fake_ice, fake_oss, hooks):
    hooks.delay["/slow"] = 1.5
    sub = subscribe(client, hooks, "/slow")
    snapshot(client, svc, fake_oss, fake_ice, T0)
    pumper(svc, WebhookSender(allow_private=True, timeout=0.3))()
    [d] = client.get(f"/v1/subscriptions/{sub['id']}/deliveries").get_json()["items"]
    assert d["status"] == "pending" and d["attempts"] == 1 and "timed out" in d["last_error"]
    assert d["next_attempt_at"] is not None


def test_an_address_refused_at_delivery_fails_the_attempt_with_the_reason(svc):
    # The name resolved to a public address when the subscription was made; now it resolves to a private one.
    with svc.sessions.begin() as s:
        s.execute(insert(Subscription).values(id="sub_dns", url="https://hooks.example.com/in", events=ALL,
                                              secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", status="enabled",
                                              created_at=utcnow()))
        s.execute(insert(Message).values(message_id="msg_x", type="snapshot.created", job_id=JOB, body="{}",
                                         created_at=utcnow(), fanned_out=False))
    assert fan_out(svc) == 1
    sender = WebhookSender(allow_private=False, resolver=lambda host, port: ["10.1.2.3"])
    [row] = due_deliveries(svc, 10)
    assert deliver(svc, sender, row.id) == "pending"
    with svc.readers() as s:
        d = s.execute(select(Delivery)).scalar_one()
    assert d.attempts == 1 and d.last_status_code is None
    assert "refused" in d.last_error and "10.1.2.3 is a private address" in d.last_error


def test_a_subscription_failing_for_the_disable_period_is_disabled_and_replay_enables_it(
        app, client, svc, fake_ice, fake_oss, hooks):
    svc.settings = svc.settings.with_(webhook_disable_after=0.15, webhook_retry_schedule=(0.3, 5.0))
    hooks.answers["/dead"] = [500]
    sub = subscribe(client, hooks, "/dead")
    snapshot(client, svc, fake_oss, fake_ice, T0)
    pump = pumper(svc)
    assert hooks.wait(lambda: client.get(f"/v1/subscriptions/{sub['id']}").get_json()["status"] == "disabled",
                      pump=pump, timeout=5)
    assert len(hooks.at("/dead")) == 2
    snapshot(client, svc, fake_oss, fake_ice, T0 + 5000, seed=2)
    pump()
    assert len(hooks.at("/dead")) == 2  # nothing new goes to a disabled subscription
    hooks.answers["/dead"] = [204]
    r = client.post(f"/v1/subscriptions/{sub['id']}/replay", json={"since": 0})
    assert r.status_code == 202
    assert client.get(f"/v1/subscriptions/{sub['id']}").get_json()["status"] == "enabled"
    assert r.get_json()["deliveries"] == 2  # the failed one, and the one made while it was disabled
    assert hooks.wait(lambda: sum(x.answered == 204 for x in hooks.at("/dead")) == 2, pump=pump)
    assert {x.webhook_id for x in hooks.at("/dead") if x.answered == 204} == set(message_ids(svc))


def test_the_delivery_engine_threads_deliver_without_help(client, svc, fake_ice, fake_oss, hooks):
    subscribe(client, hooks, "/eng")
    engine = DeliveryEngine(svc, 2, poll_seconds=0.05).start()
    try:
        snapshot(client, svc, fake_oss, fake_ice, T0)
        assert hooks.wait(lambda: len(hooks.at("/eng")) == 1)
    finally:
        engine.stop()
    assert hooks.at("/eng")[0].verified
    assert json.loads(hooks.at("/eng")[0].body)["type"] == "snapshot.created"


def test_old_messages_and_finished_deliveries_are_pruned_pending_ones_kept(client, svc, fake_ice, fake_oss, hooks):
    hooks.answers["/p"] = [204, 500]
    subscribe(client, hooks, "/p")
    snapshot(client, svc, fake_oss, fake_ice, T0)
    snapshot(client, svc, fake_oss, fake_ice, T0 + 5000, seed=2)
    pump = pumper(svc)
    assert hooks.wait(lambda: len(hooks.at("/p")) >= 2, pump=pump)  # one delivered, one pending a retry
    old = utcnow() - dt.timedelta(days=8)
    with svc.sessions.begin() as s:
        s.execute(update(Message).values(created_at=old))
        s.execute(update(Delivery).values(created_at=old))
    assert prune_push(svc, 7 * 86400) == (1, 1)  # the delivered one and its message; the pending one stays
    with svc.readers() as s:
        assert s.execute(select(func.count()).select_from(Message)).scalar_one() == 1
        assert s.execute(select(Delivery.status)).scalars().all() == ["pending"]
    svc.settings = svc.settings.with_(reconcile_seconds=0.0, retention_days=0.0)
    assert Maintenance(svc).run_once() == ["prune-messages"]


def test_a_slow_subscriber_holds_at_most_half_the_threads_and_never_delays_the_others(
        client, svc, fake_ice, fake_oss, hooks):
    hooks.delay["/slow"] = 2.5
    subscribe(client, hooks, "/slow")
    subscribe(client, hooks, "/fast")
    for i in range(4):
        snapshot(client, svc, fake_oss, fake_ice, T0 + i * 5000, seed=i + 1)
    engine = DeliveryEngine(svc, 4, poll_seconds=0.05).start()
    try:
        assert hooks.wait(lambda: len(hooks.at("/fast")) == 4)
        # Every fast delivery was answered while the slow subscriber still held its first attempts.
        assert len(hooks.at("/slow")) == 0
        assert hooks.wait(lambda: len(hooks.at("/slow")) == 4)
    finally:
        engine.stop()
