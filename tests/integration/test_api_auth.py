"""API keys, signed thumbnail URLs and CORS, through HTTP."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from receiver.services import services
from receiver.web.urlsign import URL_TTL_SECONDS, thumbnail_url
from tests.support.api import add_job, add_snapshot, get_error, get_ok
from tests.support.builders import JOB, build_app

T0 = 1796212805123
KEYS = ("key-one", "key-two")


@pytest.fixture
def keyed(settings):  # type: ignore[no-untyped-def]
    app = build_app(settings.with_(api_keys=KEYS, url_signing_key="sign-me"))
    svc = services(app)
    add_job(svc)
    sid = add_snapshot(svc, T0, data=b"jpeg")
    yield app.test_client(), svc, sid
    svc.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_v1_needs_a_bearer_key(keyed):
    client, _svc, sid = keyed
    for url in ("/v1/jobs", f"/v1/jobs/{JOB}", f"/v1/snapshots/{sid}", "/v1/events", f"/v1/snapshots/{sid}/thumbnail"):
        resp = client.get(url)
        assert resp.status_code == 401, url
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="receiver"')
        assert resp.get_json()["error"]["code"] == "Unauthorized"
    for key in KEYS:  # either key (rotation)
        assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
    wrong = client.get("/v1/jobs", headers=bearer("key-three"))
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    for header in ("Basic a2V5LW9uZQ==", "Bearer", "key-one", "Bearer "):
        assert client.get("/v1/jobs", headers={"Authorization": header}).status_code == 401, header


def test_health_probes_metrics_and_spec_stay_open(keyed):
    client, _svc, _sid = keyed
    for url in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(url).status_code == 200, url


def test_thumbnail_urls_in_json_are_signed_and_work_without_a_key(keyed):
    client, _svc, sid = keyed
    snap = get_ok(client, f"/v1/snapshots/{sid}", "Snapshot", headers=bearer("key-one"))
    url = snap["thumbnails"][0]["url"]
    q = parse_qs(urlsplit(url).query)
    assert set(q) == {"width", "exp", "sig"}
    assert URL_TTL_SECONDS <= int(q["exp"][0]) - time.time() <= 2 * URL_TTL_SECONDS
    resp = client.get(url)
    assert resp.status_code == 200 and resp.data == b"jpeg"
    # The same URL for repeated listings within the hour, so browser caches keep hitting.
    again = get_ok(client, f"/v1/snapshots/{sid}", "Snapshot", headers=bearer("key-one"))
    assert again["thumbnails"][0]["url"] == url


def test_expired_and_tampered_signatures_are_refused(keyed):
    client, _svc, sid = keyed
    old = thumbnail_url(sid, 320, "sign-me", now=time.time() - 3 * URL_TTL_SECONDS)
    get_error(client, old, 403, "ExpiredSignature")
    good = thumbnail_url(sid, 320, "sign-me")
    q = parse_qs(urlsplit(good).query)
    exp, sig = q["exp"][0], q["sig"][0]
    path = f"/v1/snapshots/{sid}/thumbnail"
    tampered = [
        f"{path}?exp={int(exp) + 3600}&sig={sig}",  # stretched expiry
        f"{path}?exp={exp}&sig={'0' * len(sig)}",
        f"{path}?exp={exp}",
        f"{path}?sig={sig}",
        f"{path}?exp=soon&sig={sig}",
        f"/v1/snapshots/{sid + 1}/thumbnail?exp={exp}&sig={sig}",  # another snapshot's path
        f"/v1/snapshots/{sid}?exp={exp}&sig={sig}",  # another endpoint
        thumbnail_url(sid, 320, "not-the-key"),
    ]
    for url in tampered:
        get_error(client, url, 403, "InvalidSignature")
    assert client.get(f"{path}?width=160&exp={exp}&sig={sig}").status_code == 200  # any width of it


def test_without_keys_urls_are_plain_and_everything_is_open(client, svc):
    add_job(svc)
    sid = add_snapshot(svc, T0, data=b"j")
    snap = get_ok(client, f"/v1/snapshots/{sid}", "Snapshot")
    assert snap["thumbnails"][0]["url"] == f"/v1/snapshots/{sid}/thumbnail?width=320"


@pytest.fixture
def cors_client(settings, request):  # type: ignore[no-untyped-def]
    app = build_app(settings.with_(cors_origins=request.param, api_keys=("k",)))
    yield app.test_client()
    services(app).close()


@pytest.mark.parametrize("cors_client", [("https://app.example",)], indirect=True)
def test_cors_for_listed_origins(cors_client):
    pre = cors_client.options("/v1/jobs", headers={"Origin": "https://app.example",
                                                    "Access-Control-Request-Method": "GET",
                                                    "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 204  # answered before authentication: browsers send no key on a preflight
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    assert "GET" in pre.headers["Access-Control-Allow-Methods"]
    resp = cors_client.get("/v1/jobs", headers={"Origin": "https://app.example", **bearer("k")})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Origin" in resp.headers["Vary"] and "ETag" in resp.headers["Access-Control-Expose-Headers"]
    denied = cors_client.get("/v1/jobs", headers={"Origin": "https://evil.example", **bearer("k")})
    assert "Access-Control-Allow-Origin" not in denied.headers
    pre_denied = cors_client.options("/v1/jobs", headers={"Origin": "https://evil.example",
                                                           "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in pre_denied.headers
    # An error answer carries the header too, so the frontend can read why.
    unauth = cors_client.get("/v1/jobs", headers={"Origin": "https://app.example"})
    assert unauth.status_code == 401 and unauth.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Access-Control-Allow-Origin" not in cors_client.post(
        "/callbacks/live-snapshot", data=b"{}", headers={"Origin": "https://app.example"}).headers


@pytest.mark.parametrize("cors_client", [("*",)], indirect=True)
def test_cors_any_origin(cors_client):
    resp = cors_client.get("/openapi.json", headers={"Origin": "https://whoever.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    pre = cors_client.options("/v1/events", headers={"Origin": "https://x.example",
                                                      "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "*"


def test_no_cors_headers_unless_configured(client):
    resp = client.get("/v1/jobs", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
