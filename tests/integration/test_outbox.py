"""The outbox: each new snapshot and each failed event writes one push message in the same transaction."""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy import select

from receiver.db.models import Message
from receiver.services import Services, services
from receiver.sim.frames import bad_inputs
from receiver.worker.dispatch import drain
from tests.support.builders import JOB, build_app, callback_body, put_snapshot

URL = "/callbacks/live-snapshot"
T0 = 1796212805123


def messages(svc: Services) -> list[Message]:
    with svc.sessions() as s:
        return list(s.execute(select(Message).order_by(Message.id)).scalars())


def test_a_new_snapshot_writes_one_snapshot_created_message_with_the_api_shape(client, svc, fake_ice, fake_oss,
                                                                                frame):
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    body = callback_body(key, T0)
    assert client.post(URL, data=body).status_code == 200
    drain(svc)
    # The same callback again (ICE retry) and a replay of the object: no second message.
    assert client.post(URL, data=body).status_code == 200
    drain(svc)
    [msg] = messages(svc)
    assert msg.type == "snapshot.created" and msg.job_id == JOB and msg.account == "default"
    assert msg.message_id.startswith("msg_") and len(msg.message_id) == 36
    sent = json.loads(msg.body)
    assert set(sent) == {"type", "timestamp", "data"} and sent["type"] == "snapshot.created"
    api = client.get(f"/v1/snapshots/{sent['data']['id']}").get_json()
    assert sent["data"] == api


def test_a_failed_event_writes_one_event_failed_message(client, svc, fake_ice, fake_oss):
    data = bad_inputs()["garbage"]
    key = put_snapshot(fake_oss, fake_ice, T0, data)
    eid = client.post(URL, data=callback_body(key, T0)).get_json()["events"][0]
    drain(svc)
    [msg] = messages(svc)
    sent = json.loads(msg.body)
    assert msg.type == "event.failed" and sent["data"]["id"] == eid and msg.account == "default"
    assert sent["data"]["status"] == "failed" and sent["data"]["last_error"]


def test_the_message_lists_thumbnails_as_the_api_does_whatever_the_configured_order(settings, fake_ice, fake_oss,
                                                                                      frame):
    # Widths configured smallest first; thread workers run without an app context.
    app = build_app(dataclasses.replace(settings, thumbnail_widths=(160, 320)))
    client, svc = app.test_client(), services(app)
    try:
        key = put_snapshot(fake_oss, fake_ice, T0, frame)
        assert client.post(URL, data=callback_body(key, T0)).status_code == 200
        drain(svc)
        [msg] = messages(svc)
        sent = json.loads(msg.body)["data"]
        assert [t["width"] for t in sent["thumbnails"]] == [320, 160]
        assert sent == client.get(f"/v1/snapshots/{sent['id']}").get_json()
    finally:
        svc.close()
