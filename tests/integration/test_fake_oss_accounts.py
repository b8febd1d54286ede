"""FakeOss with several accounts and STS tokens, through the real oss2 client (V1 StsAuth, V4 provider auth,
presigned URLs of both versions) and the credentials URI provider."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import oss2
import pytest
from alibabacloud_credentials.client import Client as CredClient
from alibabacloud_credentials.models import Config as CredConfig

from receiver.sim.fake_oss import DEFAULT_UID, FakeOss
from receiver.sim.fake_sts import CredentialsUriServer, StsAuthority, TempCredential

UID_A, UID_B = "1111111111111111", "2222222222222222"
AK_A, SK_A = "LTAIaccountA", "secret-a"
AK_B, SK_B = "LTAIaccountB", "secret-b"
JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(clock: Clock) -> StsAuthority:
    return StsAuthority(clock=clock)


@pytest.fixture
def fake(authority: StsAuthority) -> Iterator[FakeOss]:
    with FakeOss(sts=authority) as f:
        f.add_account(UID_A, {AK_A: SK_A})
        f.add_account(UID_B, {AK_B: SK_B})
        f.create_bucket("bucket-a", owner_uid=UID_A)
        f.create_bucket("bucket-b", owner_uid=UID_B)
        f.put("bucket-a", "snapshot/job-a/1.jpg", JPEG)
        f.put("bucket-b", "snapshot/job-b/1.jpg", JPEG)
        yield f


@pytest.fixture
def session() -> Iterator[oss2.Session]:
    s = oss2.Session()
    yield s
    s.session.close()


class _Provider(oss2.credentials.CredentialsProvider):  # type: ignore[misc]
    """oss2 asks this for the key, secret and token of every request (what the service does)."""

    def __init__(self, client: CredClient) -> None:
        self.client = client

    def get_credentials(self) -> oss2.credentials.Credentials:
        c = self.client.get_credential()
        return oss2.credentials.Credentials(c.access_key_id, c.access_key_secret, c.security_token)


def bucket(fake: FakeOss, session: oss2.Session, name: str, auth: object) -> oss2.Bucket:
    return oss2.Bucket(auth, fake.url, name, session=session, region=fake.region)


def v1(cred: TempCredential, token: str | None = None) -> oss2.StsAuth:
    return oss2.StsAuth(cred.access_key_id, cred.access_key_secret, token or cred.security_token)


def v4(cred: TempCredential) -> oss2.ProviderAuthV4:
    return oss2.ProviderAuthV4(
        oss2.credentials.StaticCredentialsProvider(cred.access_key_id, cred.access_key_secret, cred.security_token)
    )


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


# -- accounts ---------------------------------------------------------------------------------------------------


def test_account_reads_its_bucket_and_is_denied_the_others(fake: FakeOss, session: oss2.Session) -> None:
    a = oss2.Auth(AK_A, SK_A)
    assert bucket(fake, session, "bucket-a", a).get_object("snapshot/job-a/1.jpg").read() == JPEG
    with pytest.raises(oss2.exceptions.AccessDenied) as err:
        bucket(fake, session, "bucket-b", a).get_object("snapshot/job-b/1.jpg")
    assert err.value.status == 403
    with pytest.raises(oss2.exceptions.AccessDenied):
        bucket(fake, session, "bucket-b", oss2.AuthV4(AK_A, SK_A)).object_exists("snapshot/job-b/1.jpg")
    assert fake.fetched_keys("bucket-b") == []
    assert fake.fetched_keys() == ["snapshot/job-a/1.jpg"]
    assert [(r["uid"], r["credential"], r["status"]) for r in fake.requests] == [
        (UID_A, "access_key", 200),
        (UID_A, "access_key", 403),
        (UID_A, "access_key", 403),
    ]


def test_default_keys_and_buckets_belong_to_the_default_account(session: oss2.Session) -> None:
    with FakeOss() as f:
        f.put("legacy", "k", JPEG)  # put() creates the bucket for DEFAULT_UID, as before accounts existed
        assert f.bucket_owner("legacy") == DEFAULT_UID
        got = bucket(f, session, "legacy", oss2.Auth("AKIDEXAMPLE", "SECRETEXAMPLE")).get_object("k").read()
        assert got == JPEG
        assert f.requests[-1]["uid"] == DEFAULT_UID


def test_public_read_bucket_stays_readable_by_other_accounts(fake: FakeOss, session: oss2.Session) -> None:
    fake.create_bucket("bucket-b", public_read=True, owner_uid=UID_B)
    a = bucket(fake, session, "bucket-b", oss2.Auth(AK_A, SK_A))
    assert a.get_object("snapshot/job-b/1.jpg").read() == JPEG
    with pytest.raises(oss2.exceptions.AccessDenied):
        a.put_object("x.jpg", JPEG)


# -- STS: every place a token travels -----------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["v1", "v4"])
def test_sts_header_auth_until_expiry(
    fake: FakeOss, session: oss2.Session, authority: StsAuthority, clock: Clock, auth: str
) -> None:
    cred = authority.issue(UID_A, 30)
    b = bucket(fake, session, "bucket-a", v1(cred) if auth == "v1" else v4(cred))
    assert b.get_object("snapshot/job-a/1.jpg").read() == JPEG
    assert (fake.requests[-1]["uid"], fake.requests[-1]["credential"]) == (UID_A, "sts")
    clock.now = cred.expires_at
    with pytest.raises(oss2.exceptions.ServerError) as err:
        b.get_object("snapshot/job-a/1.jpg")
    assert (err.value.status, err.value.code) == (403, "SecurityTokenExpired")
    assert err.value.message == "The security token you provided has expired."
    assert err.value.ec == "0002-00000007"  # the error-center entry OSS names in <EC>
    with pytest.raises(oss2.exceptions.ServerError) as head_err:
        b.object_exists("snapshot/job-a/1.jpg")  # HEAD: the error travels in x-oss-err
    assert head_err.value.code == "SecurityTokenExpired"
    assert fake.fetched_keys() == ["snapshot/job-a/1.jpg"]
    assert authority.refused_expired == {UID_A: 2} and authority.accepted_expired == 0


@pytest.mark.parametrize("auth", ["v1", "v4"])
def test_sts_presigned_url_until_expiry(
    fake: FakeOss, session: oss2.Session, authority: StsAuthority, clock: Clock, auth: str
) -> None:
    cred = authority.issue(UID_A, 30)
    b = bucket(fake, session, "bucket-a", v1(cred) if auth == "v1" else v4(cred))
    url = b.sign_url("GET", "snapshot/job-a/1.jpg", 600)
    assert ("security-token=" if auth == "v1" else "x-oss-security-token=") in url
    assert fetch(url) == (200, JPEG)
    assert fake.requests[-1]["auth"] == f"{auth}-url" and fake.requests[-1]["credential"] == "sts"
    clock.now = cred.expires_at + 1  # the URL itself is still valid for 10 minutes; the token is not
    status, body = fetch(url)
    assert status == 403 and b"<Code>SecurityTokenExpired</Code>" in body
    assert fake.fetched_keys() == ["snapshot/job-a/1.jpg"]


def test_sts_token_cannot_be_swapped_in_a_signed_url(
    fake: FakeOss, session: oss2.Session, authority: StsAuthority
) -> None:
    cred = authority.issue(UID_A, 60)
    url = bucket(fake, session, "bucket-a", v1(cred)).sign_url("GET", "snapshot/job-a/1.jpg", 600)
    other = authority.issue(UID_A, 60)
    forged = url.replace(
        urllib.parse.quote(cred.security_token, safe=""), urllib.parse.quote(other.security_token, safe="")
    )
    assert forged != url
    status, body = fetch(forged)
    # security-token is a signed subresource: a swapped token breaks the signature before it is looked at.
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body


def test_wrong_and_missing_tokens(fake: FakeOss, session: oss2.Session, authority: StsAuthority) -> None:
    cred, other = authority.issue(UID_A, 60), authority.issue(UID_A, 60)
    with pytest.raises(oss2.exceptions.ServerError) as wrong:
        bucket(fake, session, "bucket-a", v1(cred, token=other.security_token)).get_object("snapshot/job-a/1.jpg")
    assert (wrong.value.status, wrong.value.code, wrong.value.ec) == (403, "InvalidSecurityToken", "0002-00000006")
    with pytest.raises(oss2.exceptions.ServerError) as missing:
        bucket(fake, session, "bucket-a", oss2.Auth(cred.access_key_id, cred.access_key_secret)).get_object(
            "snapshot/job-a/1.jpg"
        )
    assert (missing.value.status, missing.value.code) == (403, "InvalidAccessKeyId")
    assert fake.fetched_keys() == []


def test_sts_key_of_one_account_is_denied_the_other_accounts_bucket(
    fake: FakeOss, session: oss2.Session, authority: StsAuthority
) -> None:
    b = bucket(fake, session, "bucket-b", v4(authority.issue(UID_A, 60)))
    with pytest.raises(oss2.exceptions.AccessDenied):
        b.get_object("snapshot/job-b/1.jpg")
    assert fake.fetched_keys() == []


def test_provider_auth_over_the_credentials_uri_refetches_each_request(
    fake: FakeOss, session: oss2.Session, authority: StsAuthority
) -> None:
    with CredentialsUriServer(authority, UID_B, 60) as server:
        provider = _Provider(CredClient(CredConfig(type="credentials_uri", credentials_uri=server.url)))
        b = bucket(fake, session, "bucket-b", oss2.ProviderAuthV4(provider))
        for _ in range(3):
            assert b.get_object("snapshot/job-b/1.jpg").read() == JPEG
    # 60 s is inside the provider's 15-minute stale window: every request fetched a new credential.
    assert server.requests == 3
    assert len({r["uid"] for r in fake.requests}) == 1 and authority.accepted == {UID_B: 3}
