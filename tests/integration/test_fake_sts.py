"""receiver.sim.fake_sts: the STS authority, the credentials URI server and the AssumeRole server, driven by
the real ``alibabacloud_credentials`` providers (the ones the service uses)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alibabacloud_credentials.client import Client as CredClient
from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_credentials.models import Config as CredConfig

from receiver.sim.fake_sts import CredentialsUriServer, FakeStsServer, StsAuthority, TokenRefused, rpc_signature

UID = "1833220977560000"
ROLE = f"acs:ram::{UID}:role/receiver"
SOURCE_AK, SOURCE_SK = "LTAIsource", "source-secret"


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# -- the authority ------------------------------------------------------------------------------------------


def test_issued_credential_is_accepted_until_its_expiration_second() -> None:
    clock = Clock(1_800_000_000.7)
    sts = StsAuthority(clock=clock)
    cred = sts.issue(UID, 10)
    assert cred.access_key_id.startswith("STS.") and cred.security_token.startswith("CAIS")
    # Expiration is whole seconds, truncated: the client is never told a second the authority refuses.
    assert cred.expires_at == 1_800_000_010
    assert cred.expiration_text == "2027-01-15T08:00:10Z"
    clock.now = 1_800_000_009.99
    assert sts.check(cred.access_key_id, cred.security_token) == UID
    clock.now = 1_800_000_010.0
    with pytest.raises(TokenRefused) as refused:
        sts.check(cred.access_key_id, cred.security_token)
    assert refused.value.kind == "expired"
    assert sts.issued == {UID: 1} and sts.accepted == {UID: 1} and sts.refused_expired == {UID: 1}
    assert sts.accepted_expired == 0


@pytest.mark.parametrize(
    ("which", "reason"), [("wrong token", "mismatch"), ("no token", "missing"), ("unknown key", "unknown")]
)
def test_invalid_tokens_are_refused_as_invalid(which: str, reason: str) -> None:
    sts = StsAuthority()
    cred = sts.issue(UID, 60)
    other = sts.issue("2000000000000000", 60)
    ak, token = {
        "wrong token": (cred.access_key_id, other.security_token),
        "no token": (cred.access_key_id, None),
        "unknown key": ("STS.nobody", cred.security_token),
    }[which]
    with pytest.raises(TokenRefused) as refused:
        sts.check(ak, token)
    assert (refused.value.kind, refused.value.reason) == ("invalid", reason)
    assert sts.accepted == {}


def test_grace_lets_an_expired_token_through_and_counts_it() -> None:
    # The counter the service tests assert to be 0 does move when a fake is lenient.
    clock = Clock()
    sts = StsAuthority(clock=clock, grace_seconds=5)
    cred = sts.issue(UID, 1)
    clock.now += 3
    assert sts.check(cred.access_key_id, cred.security_token) == UID
    assert sts.accepted_expired == 1


# -- credentials URI ------------------------------------------------------------------------------------------


@pytest.fixture
def authority() -> StsAuthority:
    return StsAuthority()


def uri_client(url: str) -> CredClient:
    return CredClient(CredConfig(type="credentials_uri", credentials_uri=url))


def test_uri_server_hands_out_credentials_the_authority_accepts(authority: StsAuthority) -> None:
    with CredentialsUriServer(authority, UID, 3600) as server:
        got = uri_client(server.url).get_credential()
    assert got.type == "credentials_uri"
    assert got.access_key_id == server.handed_out[0].access_key_id
    assert authority.check(got.access_key_id, got.security_token) == UID
    assert server.requests == 1 and authority.issued == {UID: 1}


@pytest.mark.parametrize(("ttl", "fetches"), [(3600, 1), (15 * 60 + 30, 1), (15 * 60 - 30, 3), (5, 3)])
def test_provider_caches_only_credentials_with_more_than_15_minutes_left(
    authority: StsAuthority, ttl: int, fetches: int
) -> None:
    # alibabacloud_credentials 1.0.12 (provider/uri.py, refreshable.py): stale_time = Expiration - 15 min.
    # A credential fetched inside that window is used once and fetched again on the next call, so a TTL
    # under 15 minutes means one URI request per signed request.
    with CredentialsUriServer(authority, UID, ttl) as server:
        client = uri_client(server.url)
        keys = {client.get_credential().access_key_id for _ in range(3)}
    assert server.requests == fetches
    assert len(keys) == fetches


def test_failed_refresh_raises_from_the_provider_then_recovers(authority: StsAuthority) -> None:
    with CredentialsUriServer(authority, UID, 3600) as server:
        server.fail_next(1)
        client = uri_client(server.url)
        with pytest.raises(CredentialException, match="http_code=500"):
            client.get_credential()
        assert client.get_credential().access_key_id == server.handed_out[0].access_key_id
    assert server.requests == 2


# -- AssumeRole ------------------------------------------------------------------------------------------------


@pytest.fixture
def sts_server(authority: StsAuthority) -> Iterator[FakeStsServer]:
    with FakeStsServer(authority, roles={ROLE: UID}, access_keys={SOURCE_AK: SOURCE_SK}, ttl_seconds=60) as s:
        yield s


def role_client(server: FakeStsServer, secret: str = SOURCE_SK, role: str = ROLE, **kw: str) -> CredClient:
    return CredClient(
        CredConfig(
            type="ram_role_arn",
            access_key_id=SOURCE_AK,
            access_key_secret=secret,
            role_arn=role,
            sts_endpoint=server.url,  # a scheme in sts_endpoint overrides the provider's fixed https
            **kw,
        )
    )


def test_assume_role_signed_by_the_source_key_yields_the_role_accounts_credentials(
    authority: StsAuthority, sts_server: FakeStsServer
) -> None:
    got = role_client(sts_server).get_credential()
    assert got.type == "ram_role_arn"
    assert authority.check(got.access_key_id, got.security_token) == UID
    assert sts_server.log == [
        {"action": "AssumeRole", "role_arn": ROLE, "access_key_id": SOURCE_AK, "status": 200, "code": None}
    ]
    # ttl_seconds caps the requested 3600 s so tests can watch credentials expire.
    assert authority.lookup(got.access_key_id) is not None


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"secret": "wrong"}, "SignatureDoesNotMatch"),
        ({"role": "acs:ram::1:role/none"}, "EntityNotExist.Role"),
    ],
)
def test_assume_role_refusals_reach_the_provider(
    authority: StsAuthority, sts_server: FakeStsServer, kw: dict[str, str], code: str
) -> None:
    with pytest.raises(CredentialException, match=code):
        role_client(sts_server, **kw).get_credential()
    assert authority.issued == {}
    assert sts_server.log[-1]["code"] == code


def test_assume_role_checks_the_external_id(authority: StsAuthority) -> None:
    with FakeStsServer(
        authority, roles={ROLE: UID}, access_keys={SOURCE_AK: SOURCE_SK}, external_ids={ROLE: "ext-1"}
    ) as server:
        with pytest.raises(CredentialException, match="NoPermission"):
            role_client(server).get_credential()
        assert role_client(server, external_id="ext-1").get_credential().access_key_id.startswith("STS.")


def test_assume_role_from_temporary_credentials_until_they_expire(sts_server: FakeStsServer) -> None:
    clock = Clock()
    chained = StsAuthority(clock=clock)
    sts_server.authority = chained
    source = chained.issue("3000000000000000", 60)

    def client() -> CredClient:
        return CredClient(
            CredConfig(
                type="ram_role_arn",
                access_key_id=source.access_key_id,
                access_key_secret=source.access_key_secret,
                security_token=source.security_token,
                role_arn=ROLE,
                sts_endpoint=sts_server.url,
            )
        )

    assert chained.lookup(client().get_credential().access_key_id) is not None
    clock.now = source.expires_at
    with pytest.raises(CredentialException, match="InvalidSecurityToken.Expired"):
        client().get_credential()
    assert chained.issued == {"3000000000000000": 1, UID: 1}


OIDC_PROVIDER = f"acs:ram::{UID}:oidc-provider/ack-rrsa"


def oidc_client(server: FakeStsServer, token_file: Path) -> CredClient:
    return CredClient(
        CredConfig(
            type="oidc_role_arn",
            role_arn=ROLE,
            oidc_provider_arn=OIDC_PROVIDER,
            oidc_token_file_path=str(token_file),
            sts_endpoint=server.url,
        )
    )


def test_assume_role_with_oidc(authority: StsAuthority, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    with FakeStsServer(authority, roles={ROLE: UID}, access_keys={}, oidc_tokens={OIDC_PROVIDER: "jwt-1"}) as server:
        token_file.write_text("jwt-1")
        got = oidc_client(server, token_file).get_credential()
        assert got.type == "oidc_role_arn" and authority.check(got.access_key_id, got.security_token) == UID
        token_file.write_text("jwt-2")  # the provider re-reads the file on every refresh, as RRSA rotates it
        with pytest.raises(CredentialException, match="AuthenticationFail.OIDCToken.Invalid"):
            oidc_client(server, token_file).get_credential()
    assert [(e["action"], e["status"]) for e in server.log] == [
        ("AssumeRoleWithOIDC", 200),
        ("AssumeRoleWithOIDC", 400),
    ]


def test_rpc_signature_agrees_with_the_library() -> None:
    # The provider signs with quote_plus, the fake with the documented %20 form: equal without spaces.
    params = {"Action": "AssumeRole", "RoleArn": ROLE, "Timestamp": "2026-01-01T00:00:00Z", "Version": "2015-04-01"}
    assert rpc_signature("GET", params, "secret") == _library_signature(params, "secret")


def _library_signature(params: dict[str, str], secret: str) -> str:
    from alibabacloud_credentials.utils import parameter_helper as ph

    return str(ph.sign_string(ph.compose_string_to_sign("GET", params), secret + "&"))


def test_provider_falls_back_to_its_cached_credential_when_handed_an_expired_one(authority: StsAuthority) -> None:
    # alibabacloud_credentials 1.0.12 (refreshable.py, STRICT): a fetched credential already past its
    # Expiration is dropped and the previous one served again; with nothing cached, CredentialException.
    # A service that must never sign with an expired key has to check expiry itself.
    with CredentialsUriServer(authority, UID, 60) as server:
        client = uri_client(server.url)
        first = client.get_credential().access_key_id
        server.ttl_seconds = -5
        assert client.get_credential().access_key_id == first
        assert server.requests == 2 and authority.issued == {UID: 2}
        with pytest.raises(CredentialException, match="No cached value"):
            uri_client(server.url).get_credential()


_CHAIN = """
from alibabacloud_credentials.client import Client
c = Client()
a, b = c.get_credential(), c.get_credential()
print(a.type, a.provider_name, a.access_key_id, b.access_key_id)
"""


def test_default_chain_with_only_the_credentials_uri_variable(authority: StsAuthority, tmp_path: Path) -> None:
    # auth_util reads ALIBABA_CLOUD_* at import, hence a fresh interpreter. The ECS metadata provider is
    # still tried first (100.100.100.200 is unreachable here) and the chain falls through to the URI.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
    with CredentialsUriServer(authority, UID, 60) as server:
        env.update(HOME=str(tmp_path), ALIBABA_CLOUD_CREDENTIALS_URI=server.url)
        out = subprocess.run(
            [sys.executable, "-c", _CHAIN], env=env, capture_output=True, text=True, timeout=60, check=True
        )
    kind, provider, first, second = out.stdout.split()
    assert (kind, provider) == ("default", "default/credential_uri")
    assert [first, second] == [c.access_key_id for c in server.handed_out]
