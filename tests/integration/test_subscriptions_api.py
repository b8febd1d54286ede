"""The subscriptions API: what each bad input gets, refused URLs without RECEIVER_WEBHOOK_ALLOW_PRIVATE, the list
shape, the secret shown once, and the same API-key rule as the rest of /v1."""

from __future__ import annotations

import pytest

from receiver.services import services
from tests.support.builders import build_app

GOOD = {"url": "https://93.184.216.34/hooks", "events": ["snapshot.created"]}


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000/hook", "https://127.0.0.1/hook", "https://localhost/hook", "https://10.0.0.5/",
    "https://169.254.169.254/latest/meta-data/", "https://100.100.100.200/", "https://[fd00:ec2::254]/",
    "https://[::ffff:127.0.0.1]/", "https://2130706433/", "https://0x7f.1/", "https://017700000001/",
    "http://93.184.216.34/hooks",
])
def test_loopback_private_metadata_and_http_urls_are_refused_without_the_flag(client, url):
    r = client.post("/v1/subscriptions", json={**GOOD, "url": url})
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == "UrlNotAllowed"
    assert client.get("/v1/subscriptions").get_json()["items"] == []


@pytest.mark.parametrize(("body", "status", "code"), [
    ({**GOOD, "secret": "mine"}, 400, "InvalidParameter"),
    ({"events": ["snapshot.created"]}, 400, "MissingParameter"),
    ({**GOOD, "url": 5}, 400, "InvalidParameter"),
    ({**GOOD, "events": []}, 400, "InvalidParameter"),
    ({**GOOD, "events": ["snapshot.deleted"]}, 400, "InvalidParameter"),
    ({**GOOD, "events": "snapshot.created"}, 400, "InvalidParameter"),
    ({**GOOD, "job_ids": "job-1"}, 400, "InvalidParameter"),
    ({**GOOD, "job_ids": [1, 2]}, 400, "InvalidParameter"),
    ({**GOOD, "accounts": [""]}, 400, "InvalidParameter"),
    ({**GOOD, "description": {"a": 1}}, 400, "InvalidParameter"),
    ([GOOD], 400, "InvalidJson"),
])
def test_bad_bodies_get_400_naming_the_problem(client, body, status, code):
    r = client.post("/v1/subscriptions", json=body)
    assert r.status_code == status and r.get_json()["error"]["code"] == code
    assert client.get("/v1/subscriptions").get_json()["items"] == []


def test_not_json_and_too_large_bodies(client):
    r = client.post("/v1/subscriptions", data=b"{nope", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "InvalidJson"
    r = client.post("/v1/subscriptions", data=b"x" * 70000)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "PayloadTooLarge"


def test_create_get_list_delete_and_the_secret_is_shown_once(client):
    r = client.post("/v1/subscriptions", json={**GOOD, "job_ids": ["job-1"], "description": "covers"})
    assert r.status_code == 201
    sub = r.get_json()
    assert set(sub) == {"id", "url", "events", "job_ids", "accounts", "description", "secret", "status",
                        "created_at"}
    assert sub["secret"].startswith("whsec_") and sub["status"] == "enabled" and sub["accounts"] is None
    got = client.get(f"/v1/subscriptions/{sub['id']}").get_json()
    assert "secret" not in got and got == {k: v for k, v in sub.items() if k != "secret"}
    second = client.post("/v1/subscriptions", json=GOOD).get_json()
    page = client.get("/v1/subscriptions?limit=1").get_json()
    assert [i["id"] for i in page["items"]] == [second["id"]] and page["next_cursor"]
    page2 = client.get(f"/v1/subscriptions?limit=1&cursor={page['next_cursor']}").get_json()
    assert [i["id"] for i in page2["items"]] == [sub["id"]] and page2["next_cursor"] is None
    assert all("secret" not in i for i in page["items"] + page2["items"])
    assert client.get("/v1/subscriptions?cursor=forged").status_code == 400
    assert client.delete(f"/v1/subscriptions/{sub['id']}").status_code == 204
    assert client.get(f"/v1/subscriptions/{sub['id']}").status_code == 404


def test_unknown_ids_are_404_and_bad_status_filters_400(client):
    for method, path, kw in (("get", "/v1/subscriptions/sub_nope", {}), ("delete", "/v1/subscriptions/sub_nope", {}),
                             ("get", "/v1/subscriptions/sub_nope/deliveries", {}),
                             ("post", "/v1/subscriptions/sub_nope/replay", {"json": {"since": 0}})):
        r = getattr(client, method)(path, **kw)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "NotFound"
    sub = client.post("/v1/subscriptions", json=GOOD).get_json()
    r = client.get(f"/v1/subscriptions/{sub['id']}/deliveries?status=lost")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "InvalidParameter"
    assert client.get(f"/v1/subscriptions/{sub['id']}/deliveries?status=pending").get_json() == {
        "items": [], "next_cursor": None}


def test_with_api_keys_the_subscriptions_api_needs_a_key(settings):
    app = build_app(settings.with_(api_keys=("k1",)))
    try:
        c = app.test_client()
        assert c.post("/v1/subscriptions", json=GOOD).status_code == 401
        assert c.get("/v1/subscriptions").status_code == 401
        auth = {"Authorization": "Bearer k1"}
        assert c.post("/v1/subscriptions", json=GOOD, headers=auth).status_code == 201
        assert len(c.get("/v1/subscriptions", headers=auth).get_json()["items"]) == 1
    finally:
        services(app).close()


def test_the_flag_allows_http_to_loopback(settings):
    app = build_app(settings.with_(webhook_allow_private=True))
    try:
        r = app.test_client().post("/v1/subscriptions", json={**GOOD, "url": "http://127.0.0.1:9/x"})
        assert r.status_code == 201
    finally:
        services(app).close()
