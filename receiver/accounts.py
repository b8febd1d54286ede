"""The accounts file (product.md section 7): which Alibaba Cloud accounts this receiver serves, and how each
one's credentials are found. Parsed and checked once at start; every problem is one line naming the file,
the account and the key, so `serve`, `worker` and every command stop before doing anything.

Secrets never stand in the file, only the names of the environment variables holding them (``*_env``); the
values are read here, at start, and kept out of every repr.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from receiver.config import ConfigError, Settings

DEFAULT = "default"
ALIAS_RE = re.compile(r"^[a-z0-9-]{1,32}$")
DEFAULT_ICE_QPS = 20.0
CREDENTIAL_TYPES = ("access_key", "ram_role_arn", "credentials_uri", "oidc_role_arn", "default")

_ACCOUNT_KEYS = {"uid", "region", "ice_endpoint", "callback_token_env", "callback_auth_keys_env", "ice_qps",
                 "credentials"}
# Per credential type: required keys, optional keys.
_CREDENTIAL_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "access_key": (frozenset({"access_key_id_env", "access_key_secret_env"}), frozenset({"security_token_env"})),
    "ram_role_arn": (frozenset({"role_arn", "source"}),
                     frozenset({"external_id", "sts_endpoint", "role_session_name", "duration_seconds"})),
    "credentials_uri": (frozenset({"uri"}), frozenset()),
    "oidc_role_arn": (frozenset({"role_arn", "oidc_provider_arn", "oidc_token_file"}),
                      frozenset({"role_session_name", "sts_endpoint", "duration_seconds"})),
    "default": (frozenset(), frozenset()),
}


@dataclass(frozen=True)
class CredentialSpec:
    """How one account's credentials are obtained. ``secrets`` holds values read from the environment."""

    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Account:
    alias: str
    uid: str | None
    region: str
    ice_endpoint: str
    credentials: CredentialSpec
    ice_qps: float = DEFAULT_ICE_QPS
    callback_token: str | None = field(default=None, repr=False)
    callback_auth_keys: tuple[str, ...] = field(default=(), repr=False)
    from_file: bool = True


@dataclass(frozen=True)
class Accounts:
    """Every account by alias, in file order, and which one each callback token belongs to."""

    by_alias: Mapping[str, Account]
    source: Path | None = None

    def __iter__(self) -> Any:
        return iter(self.by_alias.values())

    def __contains__(self, alias: object) -> bool:
        return alias in self.by_alias

    def get(self, alias: str) -> Account:
        try:
            return self.by_alias[alias]
        except KeyError:
            raise KeyError(f"no account {alias!r} (accounts: {', '.join(self.by_alias)})") from None

    def for_token(self, token: str) -> Account | None:
        """The account whose callback token this is (compared by the caller in constant time); "" = bare path."""
        for account in self.by_alias.values():
            if account.callback_token == token:
                return account
        return None

    @property
    def primary(self) -> Account:
        """Whose credentials sign the receiver's own OSS requests (the thumbnail bucket): `default` if there is
        one, else the first account of the file."""
        return self.by_alias.get(DEFAULT) or next(iter(self.by_alias.values()))


def default_account(settings: Settings) -> Account:
    """The one account of a receiver without an accounts file: the environment's credentials."""
    return Account(
        alias=DEFAULT, uid=None, region=settings.ice_region, ice_endpoint=settings.ice_endpoint,
        credentials=CredentialSpec("default"), ice_qps=settings.ice_qps, callback_token=settings.callback_token,
        callback_auth_keys=settings.callback_auth_keys, from_file=False,
    )


def load_accounts(settings: Settings, environ: Mapping[str, str] | None = None) -> Accounts:
    """The accounts of these settings: the file's, or the one `default` account. Raises ConfigError (one line)."""
    if settings.accounts_file is None:
        return Accounts({DEFAULT: default_account(settings)})
    return _Parser(Path(settings.accounts_file), os.environ if environ is None else environ, settings).parse()


class _Parser:
    def __init__(self, path: Path, environ: Mapping[str, str], settings: Settings) -> None:
        self.path, self.environ, self.settings = path, environ, settings

    def fail(self, account: str | None, key: str | None, message: str) -> ConfigError:
        where = f"RECEIVER_ACCOUNTS_FILE {self.path}"
        if account is not None:
            where += f": account {account!r}"
        if key is not None:
            where += f", key {key!r}" if account is not None else f": key {key!r}"
        return ConfigError(f"{where}: {message}")

    def parse(self) -> Accounts:
        try:
            doc = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except OSError as e:
            raise self.fail(None, None, f"cannot read the file ({e.strerror or e})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise self.fail(None, None, f"not valid TOML ({' '.join(str(e).split())})") from None
        for key in doc:
            if key != "accounts":
                raise self.fail(None, key, "unknown key (the file holds only [accounts.<alias>] tables)")
        tables = doc.get("accounts")
        if not isinstance(tables, dict) or not tables:
            raise self.fail(None, "accounts", "no [accounts.<alias>] table")
        out: dict[str, Account] = {}
        for alias, table in tables.items():
            if not ALIAS_RE.match(alias):
                raise self.fail(alias, None, "bad alias: 1-32 characters of a-z, 0-9 and -")
            if not isinstance(table, dict):
                raise self.fail(alias, None, "must be a table")
            out[alias] = self.account(alias, table)
        if DEFAULT not in out and self.settings.callback_token:
            # RECEIVER_CALLBACK_TOKEN belongs to `default`: keep that account, on the environment's credentials.
            out = {DEFAULT: default_account(self.settings), **out}
        self.check_tokens(out)
        self.check_sources(out)
        return Accounts(out, self.path)

    def env(self, alias: str, key: str, table: Mapping[str, Any], required: bool, prefix: str = "") -> str | None:
        name = table.get(key)
        if name is None:
            if required:
                raise self.fail(alias, prefix + key, "missing")
            return None
        if not isinstance(name, str) or not name:
            raise self.fail(alias, prefix + key, "must name an environment variable")
        value = self.environ.get(name)
        if not value:
            raise self.fail(alias, prefix + key, f"environment variable {name} is not set")
        return value

    def string(self, alias: str, key: str, table: Mapping[str, Any], default: str | None = None,
               prefix: str = "") -> str | None:
        value = table.get(key, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self.fail(alias, prefix + key, "must be a non-empty string")
        return value

    def account(self, alias: str, table: Mapping[str, Any]) -> Account:
        for key in table:
            if key not in _ACCOUNT_KEYS:
                raise self.fail(alias, key, f"unknown key (known: {', '.join(sorted(_ACCOUNT_KEYS))})")
        uid = self.string(alias, "uid", table)
        if uid is None and alias != DEFAULT:
            raise self.fail(alias, "uid", "missing (the account id a callback's UserId must match)")
        region = self.string(alias, "region", table, self.settings.ice_region) or self.settings.ice_region
        ice_endpoint = self.string(alias, "ice_endpoint", table, f"ice.{region}.aliyuncs.com")
        qps = table.get("ice_qps", DEFAULT_ICE_QPS)
        if isinstance(qps, bool) or not isinstance(qps, int | float) or not 0 < qps <= 10_000:
            raise self.fail(alias, "ice_qps", "must be a number above 0 (calls per second)")
        token = self.env(alias, "callback_token_env", table, required=False)
        if token is not None and ("/" in token or not token.strip()):
            raise self.fail(alias, "callback_token_env", "a callback token must be one URL path segment")
        keys = self.env(alias, "callback_auth_keys_env", table, required=False)
        creds = table.get("credentials")
        if not isinstance(creds, dict):
            raise self.fail(alias, "credentials", "missing: an [accounts.<alias>.credentials] table with a type")
        return Account(
            alias=alias, uid=uid, region=region, ice_endpoint=ice_endpoint or f"ice.{region}.aliyuncs.com",
            credentials=self.credentials(alias, creds), ice_qps=float(qps), callback_token=token,
            callback_auth_keys=tuple(k.strip() for k in (keys or "").split(",") if k.strip()),
        )

    def credentials(self, alias: str, table: Mapping[str, Any]) -> CredentialSpec:
        kind = table.get("type")
        if kind not in CREDENTIAL_TYPES:
            raise self.fail(alias, "credentials.type", f"must be one of {', '.join(CREDENTIAL_TYPES)}, got {kind!r}")
        required, optional = _CREDENTIAL_KEYS[kind]
        for key in table:
            if key != "type" and key not in required | optional:
                raise self.fail(alias, f"credentials.{key}", f"unknown key for type {kind!r}")
        for key in sorted(required):
            if key not in table:
                raise self.fail(alias, f"credentials.{key}", f"missing (type {kind!r} needs it)")
        secrets: dict[str, str] = {}
        options: dict[str, Any] = {}
        for key in sorted(required | optional):
            if key not in table:
                continue
            if key.endswith("_env"):
                value = self.env(alias, key, table, required=True, prefix="credentials.")
                assert value is not None
                secrets[key.removesuffix("_env")] = value
            elif key == "duration_seconds":
                v = table[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 900:
                    raise self.fail(alias, f"credentials.{key}", "must be an integer >= 900")
                options[key] = v
            else:
                options[key] = self.string(alias, key, table, prefix="credentials.")
        if kind == "oidc_role_arn" and not os.access(options["oidc_token_file"], os.R_OK):
            raise self.fail(alias, "credentials.oidc_token_file", f"cannot read {options['oidc_token_file']}")
        return CredentialSpec(kind, options, secrets)

    def check_tokens(self, accounts: Mapping[str, Account]) -> None:
        seen: dict[str, str] = {}
        for account in accounts.values():
            token = account.callback_token
            if token is None:
                continue
            if token in seen:
                key = "callback_token_env" if account.from_file else "RECEIVER_CALLBACK_TOKEN"
                raise self.fail(account.alias, key, f"the same callback token as account {seen[token]!r}")
            seen[token] = account.alias

    def check_sources(self, accounts: Mapping[str, Account]) -> None:
        for account in accounts.values():
            spec = account.credentials
            if spec.type != "ram_role_arn":
                continue
            source = spec.options["source"]
            if source == DEFAULT and DEFAULT not in accounts:
                continue  # the default credential chain
            if source == account.alias or source not in accounts:
                raise self.fail(account.alias, "credentials.source",
                                f"{source!r} is neither another account's alias nor \"default\"")
            if accounts[source].credentials.type == "ram_role_arn":
                raise self.fail(account.alias, "credentials.source",
                                f"account {source!r} itself assumes a role; name its source instead")
