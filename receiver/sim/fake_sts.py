"""Temporary credentials for the fakes: an STS authority, a credentials URI server and an AssumeRole server.

``StsAuthority`` is the one registry FakeIce and FakeOss consult for ``STS.*`` access keys, so a credential
issued here works on both fakes until its ``Expiration`` and is refused by both from that second on, with
each service's own error. Expirations are whole seconds (the wire format has no fraction) and a credential is
expired at ``now >= expiration``: a client that trusts the Expiration it was given never sends a token the
fakes refuse.

``CredentialsUriServer`` answers what ``alibabacloud_credentials``' ``URLCredentialsProvider`` reads
(``credentials_uri`` / ``ALIBABA_CLOUD_CREDENTIALS_URI``); ``FakeStsServer`` answers ``AssumeRole`` as
``RamRoleArnCredentialsProvider`` sends it (RPC, HMAC-SHA1 signature over the query, verified with the
caller's secret), reachable with ``sts_endpoint="http://127.0.0.1:PORT"``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

from receiver.sim.loopback import LoopbackServer

__all__ = ["DEFAULT_UID", "CredentialsUriServer", "FakeStsServer", "KeyAccounts", "StsAuthority", "TempCredential",
           "TokenRefused"]

DEFAULT_UID = "1000000000000000"  # the account of the fakes' constructor keys, buckets and jobs
EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # what both credential providers parse (time.strptime, UTC)
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class TempCredential:
    access_key_id: str
    access_key_secret: str
    security_token: str
    expiration: datetime  # UTC, whole seconds
    uid: str

    @property
    def expires_at(self) -> float:
        return self.expiration.timestamp()

    @property
    def expiration_text(self) -> str:
        return self.expiration.strftime(EXPIRATION_FORMAT)


class TokenRefused(Exception):
    """``kind`` "expired" or "invalid"; ``reason`` says which invalid: "missing", "mismatch", "unknown"."""

    def __init__(self, kind: Literal["expired", "invalid"], reason: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason


class StsAuthority:
    """Thread-safe registry of the temporary credentials the fakes accept.

    Counters (per uid): ``issued``, ``refused_expired``, ``accepted`` (token checks that passed). The invariant
    ``accepted_expired == 0`` holds unless ``grace_seconds`` is set to emulate a lenient server; tests assert
    it, so a later change that lets expired tokens through shows up.
    """

    def __init__(self, clock: Callable[[], float] = time.time, grace_seconds: float = 0.0) -> None:
        self.clock = clock
        self.grace_seconds = grace_seconds
        self.issued: dict[str, int] = {}
        self.refused_expired: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        self.accepted_expired = 0
        self._lock = threading.Lock()
        self._creds: dict[str, TempCredential] = {}

    def issue(self, uid: str, ttl_seconds: float) -> TempCredential:
        # Truncated, never rounded up: the client must not believe in a second the fakes refuse.
        expires = int(self.clock() + ttl_seconds)
        cred = TempCredential(
            access_key_id="STS." + "".join(secrets.choice(_ALNUM) for _ in range(26)),
            access_key_secret="".join(secrets.choice(_ALNUM) for _ in range(44)),
            # Real tokens are long base64 ("CAIS..."); "+", "/" and "=" exercise every query encoding.
            security_token="CAIS" + base64.b64encode(secrets.token_bytes(96)).decode(),
            expiration=datetime.fromtimestamp(expires, UTC),
            uid=uid,
        )
        with self._lock:
            self._creds[cred.access_key_id] = cred
            self.issued[uid] = self.issued.get(uid, 0) + 1
        return cred

    def lookup(self, access_key_id: str) -> TempCredential | None:
        with self._lock:
            return self._creds.get(access_key_id)

    def check(self, access_key_id: str, token: str | None, now: float | None = None) -> str:
        """Return the uid owning a valid (key, token) pair; raise TokenRefused otherwise."""
        cred = self.lookup(access_key_id)
        if cred is None:
            raise TokenRefused("invalid", "unknown", f"unknown temporary access key {access_key_id!r}")
        if not token:
            raise TokenRefused("invalid", "missing", "a temporary access key needs its security token")
        if not hmac.compare_digest(token.encode(), cred.security_token.encode()):
            raise TokenRefused("invalid", "mismatch", "security token does not belong to the access key")
        t = self.clock() if now is None else now
        with self._lock:
            if t >= cred.expires_at + self.grace_seconds:
                self.refused_expired[cred.uid] = self.refused_expired.get(cred.uid, 0) + 1
                raise TokenRefused("expired", "expired", f"security token expired at {cred.expiration_text}")
            if t >= cred.expires_at:
                self.accepted_expired += 1
            self.accepted[cred.uid] = self.accepted.get(cred.uid, 0) + 1
        return cred.uid


class KeyAccounts:
    """The long-term keys a fake accepts (id -> secret), each owned by an account uid, plus the STS authority
    behind its temporary keys. The fake sets ``_lock`` before serving."""

    access_keys: dict[str, str]
    sts: StsAuthority | None
    _lock: threading.Lock

    def _init_keys(self, access_keys: Mapping[str, str], sts: StsAuthority | None) -> None:
        self.access_keys = dict(access_keys)
        self.sts = sts
        self._key_owner: dict[str, str] = dict.fromkeys(self.access_keys, DEFAULT_UID)

    def add_account(self, uid: str, access_keys: Mapping[str, str]) -> None:
        """Give account ``uid`` these long-term keys (id -> secret), next to the existing ones."""
        with self._lock:
            self.access_keys.update(access_keys)
            self._key_owner.update(dict.fromkeys(access_keys, uid))

    def _long_term_owner(self, ak: str) -> str | None:
        """The account owning long-term key ``ak``; None for a key that is not one (a temporary key)."""
        with self._lock:
            return self._key_owner.get(ak, DEFAULT_UID) if ak in self.access_keys else None


class _Loopback(LoopbackServer):
    """A loopback server whose GETs go to ``answer(path, query)``."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self._lock = threading.Lock()
        self._fail = 0

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError

    def fail_next(self, n: int) -> None:
        """Answer the next ``n`` requests with HTTP 500 (a refresh that fails)."""
        with self._lock:
            self._fail += n

    def _serve(self, target: str) -> tuple[int, bytes]:
        with self._lock:
            self.requests += 1
            failing = self._fail > 0
            self._fail -= failing
        if failing:
            return 500, b'{"Code":"InternalError","Message":"injected failure"}'
        split = urlsplit(target)
        status, body = self.answer(split.path, dict(parse_qsl(split.query, keep_blank_values=True)))
        return status, json.dumps(body).encode()

    def make_server(self) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
                status, payload = fake._serve(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
                pass

        return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


class CredentialsUriServer(_Loopback):
    """``GET <url>`` hands out a fresh credential of ``uid`` valid ``ttl_seconds`` (ECS-metadata shape)."""

    thread_name = "fake-credentials-uri"

    def __init__(self, authority: StsAuthority, uid: str, ttl_seconds: float) -> None:
        super().__init__()
        self.authority = authority
        self.uid = uid
        self.ttl_seconds = ttl_seconds
        self.handed_out: list[TempCredential] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/credentials"

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        cred = self.authority.issue(self.uid, self.ttl_seconds)
        with self._lock:
            self.handed_out.append(cred)
        return 200, {
            "Code": "Success",
            "AccessKeyId": cred.access_key_id,
            "AccessKeySecret": cred.access_key_secret,
            "SecurityToken": cred.security_token,
            "Expiration": cred.expiration_text,
            "LastUpdated": datetime.fromtimestamp(int(self.authority.clock()), UTC).strftime(EXPIRATION_FORMAT),
        }


def _pop_encode(text: str) -> str:
    # Alibaba Cloud RPC percent-encoding: RFC 3986 unreserved kept, space as %20.
    return quote(text, safe="~")


def rpc_signature(method: str, params: Mapping[str, str], secret: str) -> str:
    """The RPC (signature version 1.0, HMAC-SHA1) signature of ``params`` (without ``Signature``)."""
    canonical = "&".join(f"{_pop_encode(k)}={_pop_encode(v)}" for k, v in sorted(params.items()))
    to_sign = f"{method}&{_pop_encode('/')}&{_pop_encode(canonical)}"
    digest = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class FakeStsServer(_Loopback):
    """STS ``AssumeRole`` and ``AssumeRoleWithOIDC`` (2015-04-01, RPC over GET) for the roles in ``roles``
    (role ARN -> uid).

    AssumeRole: the caller signs with a key in ``access_keys`` or an authority-issued temporary key plus its
    ``SecurityToken`` (role chaining). ``external_ids`` (role ARN -> id) makes ``ExternalId`` mandatory for a
    role. AssumeRoleWithOIDC is unsigned: ``oidc_tokens`` (OIDC provider ARN -> the one token it accepts)
    stands in for the identity provider's signature. ``ttl_seconds`` caps the lifetime handed out below the
    requested ``DurationSeconds`` (>= 900 in both providers and real STS) so tests can see credentials expire.
    """

    thread_name = "fake-sts"

    def __init__(
        self,
        authority: StsAuthority,
        roles: Mapping[str, str],
        access_keys: Mapping[str, str],
        ttl_seconds: float | None = None,
        external_ids: Mapping[str, str] | None = None,
        oidc_tokens: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.authority = authority
        self.roles = dict(roles)
        self.access_keys = dict(access_keys)
        self.ttl_seconds = ttl_seconds
        self.external_ids = dict(external_ids or {})
        self.oidc_tokens = dict(oidc_tokens or {})
        self.log: list[dict[str, Any]] = []  # {"action", "role_arn", "access_key_id", "status", "code"}
        self._nonces: set[str] = set()

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        status, body = self._assume(query)
        with self._lock:
            self.log.append(
                {
                    "action": query.get("Action"),
                    "role_arn": query.get("RoleArn"),
                    "access_key_id": query.get("AccessKeyId"),
                    "status": status,
                    "code": body.get("Code"),
                }
            )
        return status, body

    def _assume(self, q: dict[str, str]) -> tuple[int, dict[str, Any]]:
        rid = str(uuid.uuid4()).upper()

        def error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
            return status, {"RequestId": rid, "HostId": "sts.aliyuncs.com", "Code": code, "Message": message}

        action = q.get("Action")
        if action not in ("AssumeRole", "AssumeRoleWithOIDC") or q.get("Version") != "2015-04-01":
            return error(404, "InvalidAction.NotFound", f"Specified api is not found: {action!r}.")
        if action == "AssumeRoleWithOIDC":
            for name in ("RoleArn", "OIDCProviderArn", "OIDCToken", "Timestamp"):
                if not q.get(name):
                    return error(400, "MissingParameter", f'The input parameter "{name}" is not supplied.')
            expected = self.oidc_tokens.get(q["OIDCProviderArn"])
            if expected is None:
                return error(404, "EntityNotExist.OIDCProvider", "The specified OIDC provider does not exist.")
            if not hmac.compare_digest(expected.encode(), q["OIDCToken"].encode()):
                return error(400, "AuthenticationFail.OIDCToken.Invalid", "The OIDC token is invalid.")
            return self._grant(q, rid, error)
        for name in ("AccessKeyId", "Signature", "SignatureNonce", "Timestamp", "RoleArn"):
            if not q.get(name):
                return error(400, "MissingParameter", f'The input parameter "{name}" is not supplied.')
        ak = q["AccessKeyId"]
        secret = self.access_keys.get(ak)
        if secret is None:
            temp = self.authority.lookup(ak)
            if temp is None:
                return error(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
            try:
                self.authority.check(ak, q.get("SecurityToken"))
            except TokenRefused as e:
                if e.kind == "expired":
                    return error(400, "InvalidSecurityToken.Expired", "Specified SecurityToken is expired.")
                return error(400, "InvalidSecurityToken.MismatchWithAccessKey", "Specified SecurityToken mismatch.")
            secret = temp.access_key_secret
        signed = {k: v for k, v in q.items() if k != "Signature"}
        if not hmac.compare_digest(rpc_signature("GET", signed, secret), q["Signature"]):
            return error(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        try:
            sent = datetime.strptime(q["Timestamp"], EXPIRATION_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            return error(400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted.")
        if abs(time.time() - sent) > 900:
            return error(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        with self._lock:
            if q["SignatureNonce"] in self._nonces:
                return error(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
            self._nonces.add(q["SignatureNonce"])
        if q["RoleArn"] in self.external_ids and q.get("ExternalId") != self.external_ids[q["RoleArn"]]:
            return error(403, "NoPermission", "You are not authorized to do this action (ExternalId).")
        return self._grant(q, rid, error)

    def _grant(
        self, q: dict[str, str], rid: str, error: Callable[[int, str, str], tuple[int, dict[str, Any]]]
    ) -> tuple[int, dict[str, Any]]:
        role = q["RoleArn"]
        uid = self.roles.get(role)
        if uid is None:
            return error(404, "EntityNotExist.Role", "The specified Role not exists .")
        try:
            duration = int(q.get("DurationSeconds") or 3600)
        except ValueError:
            duration = 0
        if not 900 <= duration <= 43200:
            return error(400, "InvalidParameter.DurationSeconds", "The DurationSeconds is invalid.")
        ttl = duration if self.ttl_seconds is None else min(duration, self.ttl_seconds)
        cred = self.authority.issue(uid, ttl)
        session = q.get("RoleSessionName") or "session"
        return 200, {
            "RequestId": rid,
            "AssumedRoleUser": {
                "Arn": f"{role.replace(':role/', ':assumed-role/')}/{session}",
                "AssumedRoleId": f"3{uid[:15]}:{session}",
            },
            "Credentials": {
                "AccessKeyId": cred.access_key_id,
                "AccessKeySecret": cred.access_key_secret,
                "SecurityToken": cred.security_token,
                "Expiration": cred.expiration_text,
            },
        }
