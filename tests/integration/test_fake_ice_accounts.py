"""FakeIce with several accounts, STS tokens and per-account throttling, through the real ICE SDK client
signed by ``alibabacloud_credentials`` clients (static keys, static STS, the credentials URI provider)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator

import pytest
from alibabacloud_credentials.client import Client as CredClient
from alibabacloud_credentials.models import Config as CredConfig
from alibabacloud_ice20201109 import models as ice_models
from alibabacloud_ice20201109.client import Client as IceClient
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import ClientException, ThrottlingException

from receiver.sim.fake_ice import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, DEFAULT_UID, FakeIce
from receiver.sim.fake_sts import CredentialsUriServer, StsAuthority, TempCredential

UID_A, UID_B = "1111111111111111", "2222222222222222"
AK_A, SK_A = "LTAIaccountA", "secret-a"
AK_B, SK_B = "LTAIaccountB", "secret-b"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(clock: Clock) -> StsAuthority:
    # Only expiry checks read this clock; request timestamps are still checked against the real time.
    return StsAuthority(clock=clock)


@pytest.fixture
def fake(authority: StsAuthority) -> Iterator[FakeIce]:
    with FakeIce(sts=authority) as f:
        f.add_account(UID_A, {AK_A: SK_A})
        f.add_account(UID_B, {AK_B: SK_B})
        f.add_job("job-a", owner_uid=UID_A)
        f.add_job("job-b", owner_uid=UID_B)
        f.add_job("job-default")
        yield f


def ice(fake: FakeIce, credential: CredClient) -> IceClient:
    return IceClient(
        open_api_models.Config(credential=credential, endpoint=fake.endpoint, protocol="http", region_id="cn-shanghai")
    )


def static(ak: str, sk: str) -> CredClient:
    return CredClient(CredConfig(type="access_key", access_key_id=ak, access_key_secret=sk))


def sts(cred: TempCredential, token: str | None = None) -> CredClient:
    return CredClient(
        CredConfig(
            type="sts",
            access_key_id=cred.access_key_id,
            access_key_secret=cred.access_key_secret,
            security_token=token or cred.security_token,
        )
    )


def get_job(client: IceClient, job_id: str) -> str:
    return str(client.get_live_snapshot_job(ice_models.GetLiveSnapshotJobRequest(job_id=job_id)).body.job_id)


def list_jobs(client: IceClient) -> list[str]:
    body = client.list_live_snapshot_jobs(ice_models.ListLiveSnapshotJobsRequest(page_size=100)).body
    return sorted(j.job_id for j in body.job_list)


# -- accounts ---------------------------------------------------------------------------------------------------


def test_each_account_sees_its_own_jobs_only(fake: FakeIce) -> None:
    a, b = ice(fake, static(AK_A, SK_A)), ice(fake, static(AK_B, SK_B))
    assert get_job(a, "job-a") == "job-a"
    assert list_jobs(a) == ["job-a"]
    assert list_jobs(b) == ["job-b"]
    assert list_jobs(ice(fake, static(DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET))) == ["job-default"]
    assert fake.owner("job-b") == UID_B and fake.owner("job-default") == DEFAULT_UID


@pytest.mark.parametrize("action", ["get", "files", "command"])
def test_another_accounts_job_answers_as_an_unknown_job(fake: FakeIce, action: str) -> None:
    a = ice(fake, static(AK_A, SK_A))
    calls = {
        "get": lambda job: a.get_live_snapshot_job(ice_models.GetLiveSnapshotJobRequest(job_id=job)),
        "files": lambda job: a.list_live_snapshot_files(
            ice_models.ListLiveSnapshotFilesRequest(
                job_id=job, start_time="2024-05-01T00:00:00Z", end_time="2024-05-01T01:00:00Z"
            )
        ),
        "command": lambda job: a.send_live_snapshot_job_command(
            ice_models.SendLiveSnapshotJobCommandRequest(job_id=job, command="stop")
        ),
    }
    answers = []
    for job in ("job-b", "no-such-job"):
        with pytest.raises(ClientException) as err:
            calls[action](job)
        answers.append((err.value.status_code, err.value.code, err.value.message.split(" request id")[0]))
    assert answers[0] == answers[1]
    assert answers[0][:2] == (404, "JobNotFound")
    assert fake.files("job-b") == [] and get_job(ice(fake, static(AK_B, SK_B)), "job-b") == "job-b"


def test_submitted_job_belongs_to_the_caller(fake: FakeIce) -> None:
    b = ice(fake, static(AK_B, SK_B))
    job_id = b.submit_live_snapshot_job(
        ice_models.SubmitLiveSnapshotJobRequest(
            job_name="new",
            template_id="t",
            stream_input=ice_models.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url="rtmp://x/y"),
            snapshot_output=ice_models.SubmitLiveSnapshotJobRequestSnapshotOutput(
                storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="b"
            ),
        )
    ).body.job_id
    assert fake.owner(job_id) == UID_B
    assert job_id in list_jobs(b) and job_id not in list_jobs(ice(fake, static(AK_A, SK_A)))


def test_request_log_names_account_and_credential_type(fake: FakeIce, authority: StsAuthority) -> None:
    get_job(ice(fake, static(AK_A, SK_A)), "job-a")
    get_job(ice(fake, sts(authority.issue(UID_B, 60))), "job-b")
    assert [(r["uid"], r["credential"], r["status"]) for r in fake.requests] == [
        (UID_A, "access_key", 200),
        (UID_B, "sts", 200),
    ]
    assert fake.calls_by_uid() == {UID_A: {"GetLiveSnapshotJob": 1}, UID_B: {"GetLiveSnapshotJob": 1}}


# -- STS tokens -----------------------------------------------------------------------------------------------


def test_sts_token_travels_signed_and_maps_to_its_account(fake: FakeIce, authority: StsAuthority) -> None:
    client = ice(fake, sts(authority.issue(UID_A, 60)))
    assert get_job(client, "job-a") == "job-a"
    with pytest.raises(ClientException) as err:
        get_job(client, "job-b")  # the temporary key is account A's, so B's job does not exist for it
    assert err.value.code == "JobNotFound"


def test_expired_token_is_refused_with_the_ice_error(fake: FakeIce, authority: StsAuthority, clock: Clock) -> None:
    cred = authority.issue(UID_A, 30)
    client = ice(fake, sts(cred))
    assert get_job(client, "job-a") == "job-a"
    clock.now = cred.expires_at
    with pytest.raises(ClientException) as err:
        get_job(client, "job-a")
    assert (err.value.status_code, err.value.code) == (400, "InvalidSecurityToken.Expired")
    assert "Specified SecurityToken is expired." in err.value.message
    assert authority.refused_expired == {UID_A: 1} and authority.accepted_expired == 0
    assert fake.requests[-1]["code"] == "InvalidSecurityToken.Expired"


def test_token_of_another_key_is_refused(fake: FakeIce, authority: StsAuthority) -> None:
    mine, other = authority.issue(UID_A, 60), authority.issue(UID_A, 60)
    with pytest.raises(ClientException) as err:
        get_job(ice(fake, sts(mine, token=other.security_token)), "job-a")
    assert (err.value.status_code, err.value.code) == (400, "InvalidSecurityToken.MismatchWithAccessKey")


def test_temporary_key_without_token_is_refused(fake: FakeIce, authority: StsAuthority) -> None:
    cred = authority.issue(UID_A, 60)
    with pytest.raises(ClientException) as err:
        get_job(ice(fake, static(cred.access_key_id, cred.access_key_secret)), "job-a")
    assert err.value.code == "MissingSecurityToken"


def test_temporary_key_unknown_without_an_authority() -> None:
    with FakeIce() as bare:
        cred = StsAuthority().issue(DEFAULT_UID, 60)
        with pytest.raises(ClientException) as err:
            get_job(ice(bare, sts(cred)), "job")
    assert (err.value.status_code, err.value.code) == (404, "InvalidAccessKeyId.NotFound")


def test_credentials_uri_client_signs_ice_calls(fake: FakeIce, authority: StsAuthority, clock: Clock) -> None:
    # A 60 s credential is inside the provider's 15-minute stale window: one URI fetch per ICE call. The
    # provider judges staleness by the real time, so the authority's clock must be the real time here.
    clock.now = time.time()
    with CredentialsUriServer(authority, UID_B, 60) as server:
        client = ice(fake, CredClient(CredConfig(type="credentials_uri", credentials_uri=server.url)))
        assert [get_job(client, "job-b") for _ in range(3)] == ["job-b"] * 3
    assert server.requests == 3
    assert {r["access_key_id"] for r in fake.requests} == {c.access_key_id for c in server.handed_out}
    assert authority.accepted == {UID_B: 3}


# -- throttling -----------------------------------------------------------------------------------------------


def test_throttled_account_does_not_slow_the_other(fake: FakeIce) -> None:
    fake.throttle(UID_A, 2)
    results: dict[str, list[str]] = {UID_A: [], UID_B: []}

    def run(uid: str, client: IceClient, job: str) -> None:
        for _ in range(10):
            try:
                results[uid].append(get_job(client, job))
            except ClientException as e:
                results[uid].append(e.code)

    threads = [
        threading.Thread(target=run, args=(UID_A, ice(fake, static(AK_A, SK_A)), "job-a")),
        threading.Thread(target=run, args=(UID_B, ice(fake, static(AK_B, SK_B)), "job-b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[UID_B] == ["job-b"] * 10
    assert results[UID_A].count("job-a") >= 2
    assert results[UID_A].count("Throttling.User") == fake.throttled_by_uid[UID_A] > 0
    assert UID_B not in fake.throttled_by_uid
    assert fake.calls_by_uid()[UID_A] == {"GetLiveSnapshotJob": 10}


def test_throttle_with_retry_after_and_lifted(fake: FakeIce) -> None:
    fake.throttle(UID_A, 0.001, retry_after_ms=250)
    a = ice(fake, static(AK_A, SK_A))
    get_job(a, "job-a")  # the bucket starts with one call
    with pytest.raises(ThrottlingException) as err:  # x-acs-retry-after turns it into this class
        get_job(a, "job-a")
    assert (err.value.code, err.value.retry_after) == ("Throttling.User", 250)
    assert fake.requests[-1]["status"] == 400
    fake.throttle(UID_A, None)
    assert get_job(a, "job-a") == "job-a"


def _acs3_headers(ak: str, secret: str, signed: dict[str, str]) -> dict[str, str]:
    body_hash = hashlib.sha256(b"").hexdigest()
    headers = {**signed, "x-acs-content-sha256": body_hash}
    names = sorted(headers)
    canonical = "\n".join(
        ["GET", "/", "JobId=job-a", "".join(f"{n}:{headers[n]}\n" for n in names), ";".join(names), body_hash]
    )
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    signature = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"ACS3-HMAC-SHA256 Credential={ak},SignedHeaders={';'.join(names)},Signature={signature}"
    return {**headers, "authorization": auth}


def test_security_token_outside_the_signature_is_refused(fake: FakeIce, authority: StsAuthority) -> None:
    cred = authority.issue(UID_A, 60)
    base = {
        "host": fake.endpoint,
        "x-acs-action": "GetLiveSnapshotJob",
        "x-acs-version": "2020-11-09",
        "x-acs-date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    signed_with_token = _acs3_headers(
        cred.access_key_id,
        cred.access_key_secret,
        {**base, "x-acs-signature-nonce": "n1", "x-acs-security-token": cred.security_token},
    )
    assert fake.handle("GET", "/?JobId=job-a", signed_with_token, b"")[0] == 200
    unsigned_token = {
        **_acs3_headers(cred.access_key_id, cred.access_key_secret, {**base, "x-acs-signature-nonce": "n2"}),
        "x-acs-security-token": cred.security_token,
    }
    status, _, body = fake.handle("GET", "/?JobId=job-a", unsigned_token, b"")
    assert (status, json.loads(body)["Code"]) == (400, "IncompleteSignature")
