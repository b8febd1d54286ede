"""One credential object per account (product.md section 7): an ``alibabacloud_credentials`` provider that signs
the account's ICE calls (handed to the SDK as its ``credential``) and its oss2 requests (``OssCredentials``,
asked for every signed request and presigned URL), with the status operators see in /v1/accounts.

Temporary credentials are refreshed by the library's providers ahead of expiry; what this adds:

- a credential about to expire (less than ``MIN_VALIDITY_S`` left) is never handed out: the caller gets
  ``CredentialUnavailable``, a ``Transient`` error, so the event waits and retries like ICE throttling;
- a failed refresh is a ``CredentialUnavailable`` too (never a final failure of an event), remembered as
  ``status = "error"`` with its ``last_error`` until a refresh succeeds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import oss2
from alibabacloud_credentials.http import HttpOptions
from alibabacloud_credentials.models import CredentialModel
from alibabacloud_credentials.provider import (
    DefaultCredentialsProvider,
    OIDCRoleArnCredentialsProvider,
    RamRoleArnCredentialsProvider,
    StaticAKCredentialsProvider,
    StaticSTSCredentialsProvider,
    URLCredentialsProvider,
)
from alibabacloud_credentials_api import ICredentialsProvider

from receiver.accounts import Account, Accounts
from receiver.config import Settings
from receiver.exceptions import Transient

# A request signed now must still be valid when the server reads it (and an OSS presigned URL a little later).
MIN_VALIDITY_S = 1.0
# The library refreshes temporary credentials this long before they expire (RefreshCachedSupplier.STALE_TIME).
REFRESH_AHEAD_S = 15 * 60
_HTTP = HttpOptions(connect_timeout=3000, read_timeout=5000)


class CredentialUnavailable(Transient):
    """No usable credential right now (a refresh failed, or only an expiring one is at hand): wait and retry."""

    code = "CredentialUnavailable"


def chain_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the default credential chain has anything to find beyond environment AccessKeys (which Settings
    reads itself): OIDC, a CLI profile or credentials file, a named ECS RAM role, a credentials URI."""
    env = os.environ if environ is None else environ
    if env.get("ALIBABA_CLOUD_CREDENTIALS_URI") or env.get("ALIBABA_CLOUD_ECS_METADATA"):
        return True
    if all(env.get(k) for k in ("ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
                                "ALIBABA_CLOUD_OIDC_TOKEN_FILE")):
        return True
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    files = [home / ".aliyun" / "config.json", home / ".alibabacloud" / "credentials.ini"]
    if env.get("ALIBABA_CLOUD_CREDENTIALS_FILE"):
        files.append(Path(env["ALIBABA_CLOUD_CREDENTIALS_FILE"]))
    return any(f.is_file() for f in files)


class AccountCredential:
    """An account's credentials: the provider of its type, and what the last use of it showed."""

    def __init__(self, alias: str, kind: str, provider: ICredentialsProvider | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.alias, self.kind, self.provider, self.clock = alias, kind, provider, clock
        self.status = "ok" if provider is not None else "error"
        self.last_error: str | None = None if provider is not None else "no credentials configured"
        self.expires_at: float | None = None
        self.refreshes = 0  # new credentials obtained (the first one included)
        self._last: Any = None
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.provider is not None

    def current(self) -> Any:
        """The provider's current credentials (alibabacloud_credentials ``Credentials``), never expiring ones."""
        if self.provider is None:
            raise CredentialUnavailable(f"account {self.alias!r}: no credentials configured")
        now = self.clock()
        if self.expires_at is not None and now >= self.expires_at - REFRESH_AHEAD_S:
            self.status = "refreshing"
        try:
            creds = self.provider.get_credentials()
        except Exception as e:  # noqa: BLE001 - any provider failure makes the caller wait, with the reason kept
            self._failed(f"refreshing credentials failed: {' '.join(str(e).split())[:300]}")
            raise CredentialUnavailable(f"account {self.alias!r}: {self.last_error}") from None
        expiration = creds.get_expiration() if hasattr(creds, "get_expiration") else None
        if expiration is not None and expiration - self.clock() < MIN_VALIDITY_S:
            self._failed(f"the credential provider gave credentials expiring at {expiration} (now {now:.0f})")
            raise CredentialUnavailable(f"account {self.alias!r}: {self.last_error}")
        with self._lock:
            if creds is not self._last:
                self._last = creds
                self.refreshes += 1
            self.expires_at = float(expiration) if expiration is not None else None
            self.status, self.last_error = "ok", None
        return creds

    def _failed(self, message: str) -> None:
        with self._lock:
            self.status, self.last_error = "error", message

    def check(self) -> None:
        """Raise CredentialUnavailable unless a usable credential is at hand (before an ICE call)."""
        self.current()

    # The interface the ICE SDK (alibabacloud_tea_openapi) asks its ``credential`` for.
    def get_credential(self) -> CredentialModel:
        c = self.current()
        return CredentialModel(access_key_id=c.get_access_key_id(), access_key_secret=c.get_access_key_secret(),
                               security_token=c.get_security_token(), type=self.kind,
                               provider_name=c.get_provider_name())

    def get_access_key_id(self) -> str:
        return str(self.current().get_access_key_id())

    def get_access_key_secret(self) -> str:
        return str(self.current().get_access_key_secret())

    def get_security_token(self) -> str | None:
        token = self.current().get_security_token()
        return str(token) if token else None

    def get_type(self) -> str:
        return self.kind

    def describe(self) -> dict[str, Any]:
        """What /v1/accounts shows: never a key, secret or token."""
        return {"credential_type": self.kind, "credential_status": self.status,
                "credential_expires_at": self.expires_at, "last_error": self.last_error}


class OssCredentials(oss2.CredentialsProvider):
    """oss2's view of an AccountCredential: asked for every signed request and presigned URL."""

    def __init__(self, credential: AccountCredential) -> None:
        self.credential = credential

    def get_credentials(self) -> oss2.credentials.Credentials:
        c = self.credential.current()
        return oss2.credentials.Credentials(c.get_access_key_id(), c.get_access_key_secret(),
                                            c.get_security_token() or "")


def oss_auth(credential: AccountCredential) -> Any:
    """oss2 auth signing with the account's current credentials (V1, as before; the token travels along)."""
    if not credential.configured:
        # Without credentials only public-read buckets are readable; OSS answers 403 (StoreError) otherwise.
        return oss2.AnonymousAuth()
    return oss2.ProviderAuth(OssCredentials(credential))


def _static(access_key_id: str, secret: str, token: str | None) -> ICredentialsProvider:
    if token:
        return StaticSTSCredentialsProvider(access_key_id=access_key_id, access_key_secret=secret,
                                            security_token=token)
    return StaticAKCredentialsProvider(access_key_id=access_key_id, access_key_secret=secret)


def _default_chain(settings: Settings, environ: Mapping[str, str] | None) -> tuple[str, ICredentialsProvider | None]:
    # The chain's first step (environment AccessKeys) as Settings read them, so a Settings handed in (tests, the
    # demo) means what it says; the rest of the chain only when it has something to find.
    if settings.access_key_id and settings.access_key_secret:
        return "default", _static(settings.access_key_id, settings.access_key_secret, settings.security_token)
    if chain_configured(environ):
        return "default", DefaultCredentialsProvider()
    return "default", None


def build_credentials(accounts: Accounts, settings: Settings, environ: Mapping[str, str] | None = None,
                      clock: Callable[[], float] = time.time) -> dict[str, AccountCredential]:
    """One AccountCredential per account alias; a role's source account shares its provider object."""
    providers: dict[str, ICredentialsProvider | None] = {}

    def provider_of(account: Account) -> ICredentialsProvider | None:
        if account.alias in providers:
            return providers[account.alias]
        spec, o, s = account.credentials, account.credentials.options, account.credentials.secrets
        p: ICredentialsProvider | None
        if spec.type == "access_key":
            p = _static(s["access_key_id"], s["access_key_secret"], s.get("security_token"))
        elif spec.type == "credentials_uri":
            p = URLCredentialsProvider(uri=o["uri"], http_options=_HTTP)
        elif spec.type == "ram_role_arn":
            source = (provider_of(accounts.get(o["source"])) if o["source"] in accounts
                      else _default_chain(settings, environ)[1])
            p = RamRoleArnCredentialsProvider(
                credentials_provider=source, role_arn=o["role_arn"],
                role_session_name=o.get("role_session_name") or f"receiver-{account.alias}",
                duration_seconds=o.get("duration_seconds", 3600), external_id=o.get("external_id"),
                sts_endpoint=o.get("sts_endpoint"), http_options=_HTTP)
        elif spec.type == "oidc_role_arn":
            p = OIDCRoleArnCredentialsProvider(
                role_arn=o["role_arn"], oidc_provider_arn=o["oidc_provider_arn"],
                oidc_token_file_path=o["oidc_token_file"],
                role_session_name=o.get("role_session_name") or f"receiver-{account.alias}",
                duration_seconds=o.get("duration_seconds", 3600), sts_endpoint=o.get("sts_endpoint"),
                http_options=_HTTP)
        else:
            p = _default_chain(settings, environ)[1]
        providers[account.alias] = p
        return p

    return {a.alias: AccountCredential(a.alias, a.credentials.type, provider_of(a), clock) for a in accounts}
