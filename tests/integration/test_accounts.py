"""Two accounts side by side over the real SDKs and the fakes (product.md section 7): one on an AccessKey, one on
temporary credentials from a credentials URI that expire every 2.5 s; routing by token, ownership, UserId,
per-account throttling, a failing refresh, and no secret ever shown."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from receiver.config import Settings
from receiver.db.models import Event, EventStatus
from receiver.services import Services, services
from receiver.sim.fake_ice import DEFAULT_UID, FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.fake_sts import CredentialsUriServer, StsAuthority
from receiver.sim.frames import make_frame
from tests.support.builders import AK, OSS_ENDPOINT, SK, Cli, build_app

UID_B = "1833220977560001"
TOKEN_A, TOKEN_B = "token-of-account-a", "token-of-account-b"
BUCKET_A, BUCKET_B = "bucket-a", "bucket-b"
JOB_A, JOB_B = "job-a", "job-b"
TTL = 2.5

ACCOUNTS = """
[accounts.live-a]
uid = "{uid_a}"
ice_endpoint = "{ice}"
callback_token_env = "T_LIVE_A_TOKEN"
ice_qps = {qps_a}
[accounts.live-a.credentials]
type = "access_key"
access_key_id_env = "T_LIVE_A_AK_ID"
access_key_secret_env = "T_LIVE_A_AK_SECRET"

[accounts.live-b]
uid = "{uid_b}"
ice_endpoint = "{ice}"
callback_token_env = "T_LIVE_B_TOKEN"
[accounts.live-b.credentials]
type = "credentials_uri"
uri = "{uri}"
"""


@pytest.fixture
def sts() -> StsAuthority:
    return StsAuthority()


@pytest.fixture
def ice(sts: StsAuthority) -> Iterator[FakeIce]:
    with FakeIce(access_keys={AK: SK}, sts=sts) as fake:
        fake.add_account(UID_B, {})
        fake.add_job(JOB_A, bucket=BUCKET_A, endpoint=OSS_ENDPOINT)
        fake.add_job(JOB_B, bucket=BUCKET_B, endpoint=OSS_ENDPOINT, owner_uid=UID_B)
        yield fake


@pytest.fixture
def oss(sts: StsAuthority) -> Iterator[FakeOss]:
    with FakeOss(access_keys={AK: SK}, sts=sts) as fake:
        fake.add_account(UID_B, {})
        fake.create_bucket(BUCKET_A, owner_uid=DEFAULT_UID)
        fake.create_bucket(BUCKET_B, owner_uid=UID_B)
        yield fake


@pytest.fixture
def uri_server(sts: StsAuthority) -> Iterator[CredentialsUriServer]:
    server = CredentialsUriServer(sts, UID_B, TTL).start()
    yield server
    server.stop()


def write_accounts(path: Path, ice: FakeIce, uri: str, qps_a: float = 50) -> Path:
    path.write_text(ACCOUNTS.format(uid_a=DEFAULT_UID, uid_b=UID_B, ice=ice.url, uri=uri, qps_a=qps_a))
    return path


@pytest.fixture
def accounts_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("T_LIVE_A_TOKEN", TOKEN_A), ("T_LIVE_B_TOKEN", TOKEN_B), ("T_LIVE_A_AK_ID", AK),
                        ("T_LIVE_A_AK_SECRET", SK)):
        monkeypatch.setenv(name, value)


@pytest.fixture
def settings(tmp_path: Path, ice: FakeIce, oss: FakeOss, uri_server: CredentialsUriServer,
             accounts_env: None) -> Settings:
    return Settings(
        data_dir=tmp_path, accounts_file=str(write_accounts(tmp_path / "accounts.toml", ice, uri_server.url)),
        oss_endpoint_map={OSS_ENDPOINT: oss.url}, workers=4, retry_base_seconds=0.05, retry_max_seconds=0.5,
        sweep_seconds=0.05, lease_seconds=5, max_attempts=5, ice_timeout_ms=2000, oss_timeout_seconds=2,
        thumbnail_widths=(160,),
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    # Overrides the shared fixture (tests/support/fixtures.py, whose svc and client use it): workers running.
    app = build_app(settings)
    services(app).dispatcher.start()  # type: ignore[union-attr]
    yield app
    services(app).close()


def body(job: str, bucket: str, key: str, ms: int, **envelope: Any) -> bytes:
    return json.dumps({"EventType": "LiveSnapshotComplete", "EventTime": "2026-11-28T12:00:00Z", **envelope,
                       "MessageBody": {"JobId": job, "OssObject": key, "OssBucket": bucket,
                                       "OssEndpoint": OSS_ENDPOINT, "CreateTimestamp": ms}}).encode()


def put(oss: FakeOss, job: str, bucket: str, ms: int, frame: bytes) -> str:
    key = f"snapshot/{job}/{ms}.jpg"
    oss.put(bucket, key, frame)
    return key


def events(svc: Services) -> list[Event]:
    with svc.sessions() as s:
        return list(s.execute(select(Event).order_by(Event.id)).scalars())


def wait_settled(svc: Services, timeout: float = 30.0) -> list[Event]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = events(svc)
        if evs and all(e.status not in (EventStatus.PENDING, EventStatus.PROCESSING) for e in evs):
            return evs
        time.sleep(0.05)
    raise AssertionError(f"not settled: {[(e.id, e.status, e.last_error) for e in events(svc)]}")


def secrets_used(sts: StsAuthority, uri_server: CredentialsUriServer) -> list[str]:
    values = [SK, TOKEN_A, TOKEN_B]
    for cred in uri_server.handed_out:
        values += [cred.access_key_secret, cred.security_token]
    return values


T0 = 1796212805123


def test_two_accounts_side_by_side_through_expiring_credentials(
        client: FlaskClient, svc: Services, ice: FakeIce, oss: FakeOss, sts: StsAuthority,
        uri_server: CredentialsUriServer) -> None:
    frame = make_frame(seed=3, width=320, height=180)
    started = time.monotonic()
    sent = 0
    # Frames for about four lifetimes of B's temporary credential (each 1.5-2.5 s), both accounts interleaved.
    while time.monotonic() - started < 4 * TTL:
        ms = T0 + sent * 1000
        for job, bucket, token in ((JOB_A, BUCKET_A, TOKEN_A), (JOB_B, BUCKET_B, TOKEN_B)):
            key = put(oss, job, bucket, ms, frame)
            r = client.post(f"/callbacks/live-snapshot/{token}", data=body(job, bucket, key, ms))
            assert r.status_code == 200 and r.get_json()["status"] == "accepted", r.get_json()
        sent += 1
        time.sleep(0.25)
    evs = wait_settled(svc)
    assert len(evs) == 2 * sent
    # Every event done at its first attempt: none failed, none retried for an expired (or any) credential.
    assert [(e.status, e.attempts, e.last_error) for e in evs] == [(EventStatus.DONE, 1, None)] * len(evs)
    assert {e.account for e in evs if e.job_id == JOB_B} == {"live-b"}
    assert {e.account for e in evs if e.job_id == JOB_A} == {"live-a"}
    # The fakes never accepted (nor had to refuse) an expired token; B's credential was renewed several times.
    assert sts.accepted_expired == 0
    assert sts.refused_expired.get(UID_B, 0) == 0
    gw_b = svc.gateways["live-b"].credential
    assert gw_b is not None and gw_b.refreshes >= 3 and sts.issued[UID_B] == gw_b.refreshes
    # Each account's requests went out under its own identity: A with its AccessKey, B with STS tokens.
    fetched = [r for r in oss.requests if r["method"] == "GET" and r["key"]]
    assert {r["uid"] for r in fetched if r["bucket"] == BUCKET_A} == {DEFAULT_UID}
    assert {r["uid"] for r in fetched if r["bucket"] == BUCKET_B} == {UID_B}
    by_uid = ice.calls_by_uid()
    assert by_uid.get(DEFAULT_UID) and by_uid.get(UID_B)
    # The read API says whose each job is, and filters by it.
    jobs = {j["job_id"]: j["account"] for j in client.get("/v1/jobs").get_json()["items"]}
    assert jobs == {JOB_A: "live-a", JOB_B: "live-b"}
    assert [j["job_id"] for j in client.get("/v1/jobs?account=live-b").get_json()["items"]] == [JOB_B]
    assert client.get("/v1/jobs?account=nobody").get_json()["items"] == []
    assert client.get(f"/v1/jobs/{JOB_B}").get_json()["account"] == "live-b"
    # /v1/accounts: exactly the contract's fields, B's expiry shown, no secret anywhere.
    r = client.get("/v1/accounts")
    items = {a["alias"]: a for a in r.get_json()["items"]}
    assert set(items) == {"live-a", "live-b"}
    assert set(items["live-b"]) == {"alias", "uid", "region", "credential_type", "credential_status",
                                    "credential_expires_at", "last_error", "jobs", "ice_calls", "ice_throttled"}
    assert (items["live-a"]["credential_type"], items["live-a"]["credential_expires_at"]) == ("access_key", None)
    assert items["live-b"]["credential_type"] == "credentials_uri" and items["live-b"]["credential_expires_at"]
    assert items["live-b"]["uid"] == UID_B and items["live-b"]["jobs"] == 1
    assert items["live-a"]["credential_status"] == items["live-b"]["credential_status"] == "ok"
    assert items["live-a"]["ice_calls"] >= 1 and items["live-b"]["ice_calls"] >= 1
    text = r.get_data(as_text=True) + client.get("/readyz").get_data(as_text=True)
    for secret in secrets_used(sts, uri_server):
        assert secret not in text
    assert client.get("/readyz").get_json() == {"status": "ready", "credentials": "configured",
                                                "accounts": {"live-a": "ok", "live-b": "ok"}}
    # /metrics carries the account on ICE and OSS calls.
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'account="live-b"' in metrics and 'service="oss"' in metrics


def test_foreign_job_and_foreign_user_id_are_rejected_with_nothing_fetched(
        client: FlaskClient, svc: Services, oss: FakeOss) -> None:
    frame = make_frame(seed=4, width=320, height=180)
    key_b = put(oss, JOB_B, BUCKET_B, T0, frame)
    assert client.post(f"/callbacks/live-snapshot/{TOKEN_B}", data=body(JOB_B, BUCKET_B, key_b, T0)).status_code == 200
    [first] = wait_settled(svc)
    assert first.status == EventStatus.DONE
    before = len(oss.requests)
    # A's token naming B's job (known as B's): rejected before any request.
    r = client.post(f"/callbacks/live-snapshot/{TOKEN_A}", data=body(JOB_B, BUCKET_B, key_b, T0))
    assert r.status_code == 200 and r.get_json()["status"] == "accepted"  # a new event, not B's duplicate
    # An envelope whose UserId is not the account's: rejected too.
    key_a = put(oss, JOB_A, BUCKET_A, T0, frame)
    r = client.post(f"/callbacks/live-snapshot/{TOKEN_A}", data=body(JOB_A, BUCKET_A, key_a, T0, UserId=UID_B))
    assert r.status_code == 200
    evs = wait_settled(svc)
    foreign, spoofed = evs[1], evs[2]
    assert (foreign.status, foreign.account) == (EventStatus.REJECTED, "live-a")
    assert "job belongs to account 'live-b'" in (foreign.last_error or "")
    assert (spoofed.status, spoofed.user_id) == (EventStatus.REJECTED, UID_B)
    assert "UserId" in (spoofed.last_error or "")
    fetched = [r for r in oss.requests[before:] if r["method"] in ("GET", "HEAD")]
    assert fetched == []
    before = len(oss.requests)
    # The job still belongs to B, and B's credentials presign its originals (A's would get 403).
    assert client.get(f"/v1/jobs/{JOB_B}").get_json()["account"] == "live-b"
    snap = client.get(f"/v1/jobs/{JOB_B}/snapshots/latest").get_json()
    original = client.get(f"/v1/snapshots/{snap['id']}/original")
    assert original.status_code == 302 and "security-token=" in original.headers["Location"]
    import urllib.request

    with urllib.request.urlopen(original.headers["Location"], timeout=5) as r:
        assert r.read() == frame
    # A wrong token is 401; the bare path 404 (every account has a token).
    assert client.post("/callbacks/live-snapshot/nope", data=body(JOB_A, BUCKET_A, key_a, T0)).status_code == 401
    assert client.post("/callbacks/live-snapshot", data=body(JOB_A, BUCKET_A, key_a, T0)).status_code == 404


def test_a_failing_refresh_makes_events_wait_and_shows_then_nothing_is_lost(
        client: FlaskClient, svc: Services, oss: FakeOss, sts: StsAuthority,
        uri_server: CredentialsUriServer) -> None:
    frame = make_frame(seed=5, width=320, height=180)
    credential = svc.gateways["live-b"].credential
    assert credential is not None
    uri_server.fail_next(3)  # the first refresh and two retries fail (about 1.5 s, see AccountCredential)
    keys = [put(oss, JOB_B, BUCKET_B, T0 + i * 1000, frame) for i in range(3)]
    for i, key in enumerate(keys):
        assert client.post(f"/callbacks/live-snapshot/{TOKEN_B}",
                           data=body(JOB_B, BUCKET_B, key, T0 + i * 1000)).status_code == 200
    deadline = time.monotonic() + 10
    while credential.status != "error" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # several retries of every event while the credentials URI keeps failing
    evs = events(svc)
    assert {e.status for e in evs} <= {EventStatus.PENDING, EventStatus.PROCESSING}
    assert all(e.attempts <= 1 for e in evs)  # waiting for credentials is not an attempt
    b = {a["alias"]: a for a in client.get("/v1/accounts").get_json()["items"]}["live-b"]
    assert b["credential_status"] == "error" and "refreshing credentials failed" in b["last_error"]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["accounts"]["live-b"] == "error"
    assert ready.get_json()["credentials"] == "error"
    evs = wait_settled(svc, timeout=60)
    assert [e.status for e in evs] == [EventStatus.DONE] * 3
    assert sts.accepted_expired == 0
    assert client.get("/readyz").get_json()["accounts"]["live-b"] == "ok"


def test_throttled_account_slows_down_without_holding_up_the_other(
        tmp_path: Path, ice: FakeIce, oss: FakeOss, uri_server: CredentialsUriServer, sts: StsAuthority,
        settings: Settings) -> None:
    s = settings.with_(accounts_file=str(write_accounts(tmp_path / "throttled.toml", ice, uri_server.url, qps_a=20)),
                       job_cache_seconds=0.0, data_dir=tmp_path / "throttled", max_attempts=50)
    ice.throttle(DEFAULT_UID, 4)
    app = build_app(s)
    svc = services(app)
    svc.dispatcher.start()  # type: ignore[union-attr]
    client = app.test_client()
    try:
        frame = make_frame(seed=6, width=160, height=90)
        for i in range(30):
            ms = T0 + i * 1000
            for job, bucket, token in ((JOB_A, BUCKET_A, TOKEN_A), (JOB_B, BUCKET_B, TOKEN_B)):
                key = put(oss, job, bucket, ms, frame)
                r = client.post(f"/callbacks/live-snapshot/{token}", data=body(job, bucket, key, ms))
                assert r.status_code == 200
        evs = wait_settled(svc, timeout=60)
        assert {e.status for e in evs} == {EventStatus.DONE}
        b_events = [e for e in evs if e.account == "live-b"]
        assert all(e.attempts == 1 for e in b_events)  # B never waited for A's quota
        assert ice.throttled_by_uid.get(UID_B, 0) == 0
        bucket_a = svc.gateways["live-a"].bucket
        assert bucket_a is not None and bucket_a.throttled == ice.throttled_by_uid.get(DEFAULT_UID, 0) > 0
        assert bucket_a.rate < bucket_a.configured or bucket_a.throttled > 0
        accounts = {a["alias"]: a for a in client.get("/v1/accounts").get_json()["items"]}
        assert accounts["live-a"]["ice_throttled"] == bucket_a.throttled and accounts["live-b"]["ice_throttled"] == 0
    finally:
        svc.close()


def test_receiver_accounts_command_prints_the_table_without_secrets(
        settings: Settings, sts: StsAuthority, uri_server: CredentialsUriServer, ice: FakeIce) -> None:
    result = Cli(settings).invoke("accounts")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:5] == ["alias", "uid", "region", "credential_type", "credential_status"]
    assert [line.split()[0] for line in lines[1:]] == ["live-a", "live-b"]
    assert "credentials_uri" in lines[2] and "ok" in lines[2]
    assert ice.calls_by_uid()[UID_B].get("ListLiveSnapshotJobs") == 1
    for secret in secrets_used(sts, uri_server):
        assert secret not in result.output
    # One account failing makes it exit non-zero, naming it.
    uri_server.fail_next(1)
    result = Cli(settings).invoke("accounts")
    assert result.exit_code != 0 and "live-b" in result.output and "error" in result.output
    for secret in secrets_used(sts, uri_server):
        assert secret not in result.output


def test_track_with_account(settings: Settings, ice: FakeIce) -> None:
    cli = Cli(settings)
    result = cli.invoke("track", JOB_B, "--account", "live-b")
    assert result.exit_code == 0, result.output
    # The job is B's now: tracking it as A's is refused; unknown accounts are named.
    result = cli.invoke("track", JOB_B, "--account", "live-a")
    assert result.exit_code != 0
    result = cli.invoke("track", JOB_A, "--account", "nobody")
    assert result.exit_code != 0 and "no account 'nobody'" in result.output
    result = cli.invoke("track", JOB_A)  # default `default`: not among this file's accounts
    assert result.exit_code != 0 and "no account 'default'" in result.output


def test_presigned_urls_carry_the_temporary_token(svc: Services, oss: FakeOss, settings: Settings) -> None:
    import urllib.request

    from receiver.adapters.thumbstore import thumbnail_store_from_url

    frame = make_frame(seed=7, width=160, height=90)
    key = put(oss, JOB_B, BUCKET_B, T0, frame)
    credential = svc.gateways["live-b"].credential
    url = svc.gateways["live-b"].source.presign(OSS_ENDPOINT, BUCKET_B, key, 60)  # type: ignore[attr-defined]
    assert "security-token=" in url
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.read() == frame
    # The thumbnail store signs with a credential object too: its browser URLs carry the token.
    oss.create_bucket("thumbs-b", owner_uid=UID_B)
    store = thumbnail_store_from_url(f"oss://thumbs-b/t?endpoint={OSS_ENDPOINT}&redirect=1", settings, credential)
    try:
        store.put("ab/x-160.jpg", b"thumb", "image/jpeg")
        url = store.presign("ab/x-160.jpg", 60)  # type: ignore[attr-defined]
        assert url is not None and "security-token=" in url
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.read() == b"thumb"
    finally:
        store.close()  # type: ignore[attr-defined]
