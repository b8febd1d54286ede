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

import logging
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
from receiver.exceptions import CredentialUnavailable

# A request signed now must still be valid when the server reads it (and an OSS presigned URL a little later).
MIN_VALIDITY_S = 1.0
# The library refreshes temporary credentials this long before they expire (RefreshCachedSupplier.STALE_TIME).
REFRESH_AHEAD_S = 15 * 60
_HTTP = HttpOptions(connect_timeout=3000, read_timeout=5000)

# The library logs through its own handler on a logger named "credentials": a warning for every renewal of a
# credential with less than 15 minutes left, and a traceback for every failed refresh. AccountCredential reports
# both itself (status, last_error, the event's own log line), so only what it cannot say comes through.
logging.getLogger("credentials").setLevel(logging.CRITICAL)


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
                 clock: Callable[[], float] = time.time, secrets: tuple[str, ...] = ()) -> None:
        self.alias, self.kind, self.provider, self.clock = alias, kind, provider, clock
        self._secrets = tuple(v for v in secrets if v)
        self.status = "ok" if provider is not None else "error"
        self.last_error: str | None = None if provider is not None else "no credentials configured"
        self.expires_at: float | None = None
        self.refreshes = 0  # new credentials obtained (the first one included)
        self._last: Any = None
        self._refresh_at = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    @property
    def configured(self) -> bool:
        return self.provider is not None

    def current(self) -> Any:
        """The current credentials (alibabacloud_credentials ``Credentials``), never expiring ones.

        A temporary credential is kept until ``_refresh_at`` (REFRESH_AHEAD_S before it expires, or 30 % of
        its lifetime for short ones), then one thread asks the provider for a new one while the others keep
        using the old one as long as it stays valid. The library alone would refresh on every request once
        fewer than 15 minutes are left, i.e. always for STS's shortest (900 s) sessions.
        """
        if self.provider is None:
            raise CredentialUnavailable(f"account {self.alias!r}: no credentials configured")
        cached, now = self._last, self.clock()
        if cached is not None and self.expires_at is None:
            return self._refresh(cached, force=True)  # static keys, or a chain that keeps its own cache
        if cached is not None and self.expires_at is not None:
            if now < self._refresh_at:
                return cached
            valid = self.expires_at - now >= MIN_VALIDITY_S
            if not self._refreshing.acquire(blocking=not valid, timeout=-1 if valid else 15.0):
                if valid:
                    return cached  # another thread is renewing it; this one is still good
                raise CredentialUnavailable(f"account {self.alias!r}: waiting for a credential refresh")
        elif not self._refreshing.acquire(timeout=15.0):
            raise CredentialUnavailable(f"account {self.alias!r}: waiting for a credential refresh")
        try:
            return self._refresh(cached)
        finally:
            self._refreshing.release()

    def _refresh(self, cached: Any, force: bool = False) -> Any:
        now = self.clock()
        if not force and cached is not None and cached is not self._last:
            return self._last  # renewed by another thread while this one waited
        if now < self._retry_at and self.status == "error":
            # A refresh failed moments ago: do not ask the provider again for every waiting request.
            raise CredentialUnavailable(f"account {self.alias!r}: {self.last_error}", retry_after=self._retry_at - now)
        if self.expires_at is not None:
            self.status = "refreshing"
        try:
            creds = self.provider.get_credentials()  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - any provider failure makes the caller wait, with the reason kept
            message = f"refreshing credentials failed: {' '.join(str(e).split())[:300]}"
            self._failures += 1
            if cached is not None and self.expires_at is not None and self.expires_at - now >= MIN_VALIDITY_S:
                with self._lock:
                    self.last_error = self.redact(message)
                    self._refresh_at = now + 1.0  # try again soon, meanwhile the old one serves
                return cached
            self._failed(message)
            self._retry_at = now + min(30.0, 0.5 * 2 ** min(self._failures - 1, 6))
            raise CredentialUnavailable(f"account {self.alias!r}: {self.last_error}",
                                        retry_after=self._retry_at - now) from None
        self._failures = 0
        expiration = creds.get_expiration() if hasattr(creds, "get_expiration") else None
        now = self.clock()
        if expiration is not None and expiration - now < MIN_VALIDITY_S:
            self._failed(f"the credential provider gave credentials expiring at {expiration} (now {now:.0f})")
            raise CredentialUnavailable(f"account {self.alias!r}: {self.last_error}")
        with self._lock:
            # Static providers hand out a new object with the same values every time: that is no renewal.
            fresh = self._last is None or (creds is not self._last and _values(creds) != _values(self._last))
            if fresh:
                self._last = creds
                self.refreshes += 1
                if expiration is not None:
                    life = expiration - now
                    self._refresh_at = expiration - min(REFRESH_AHEAD_S, max(MIN_VALIDITY_S, life * 0.3))
            else:
                self._last = creds
                if expiration is not None:
                    self._refresh_at = now + 1.0
            self.expires_at = float(expiration) if expiration is not None else None
            self.status, self.last_error = "ok", None
        return creds

    def _failed(self, message: str) -> None:
        with self._lock:
            self.status, self.last_error = "error", self.redact(message)

    def redact(self, text: str) -> str:
        """``text`` without any key id, secret or token of this account (error messages may quote them)."""
        values = list(self._secrets)
        last = self._last
        if last is not None:
            values += [last.get_access_key_id(), last.get_access_key_secret(), last.get_security_token()]
        for v in sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True):
            text = text.replace(v, "***")
        return text

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


def _values(creds: Any) -> tuple[Any, ...]:
    return (creds.get_access_key_id(), creds.get_access_key_secret(), creds.get_security_token())


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

    env_secrets = tuple(v for v in (settings.access_key_id, settings.access_key_secret, settings.security_token) if v)
    return {a.alias: AccountCredential(a.alias, a.credentials.type, provider_of(a), clock,
                                       tuple(a.credentials.secrets.values()) + env_secrets) for a in accounts}
