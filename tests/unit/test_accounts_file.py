"""The accounts file (product.md section 7): what a good file gives, and the one line each bad one gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.accounts import DEFAULT, load_accounts
from receiver.config import ConfigError, Settings

GOOD = """
[accounts.live-a]
uid = "1833220977560000"
region = "cn-shanghai"
callback_token_env = "A_TOKEN"
callback_auth_keys_env = "A_KEYS"
ice_qps = 5
[accounts.live-a.credentials]
type = "access_key"
access_key_id_env = "A_ID"
access_key_secret_env = "A_SECRET"

[accounts.live-b]
uid = "1833220977560001"
region = "cn-beijing"
ice_endpoint = "http://127.0.0.1:9"
callback_token_env = "B_TOKEN"
[accounts.live-b.credentials]
type = "credentials_uri"
uri = "http://127.0.0.1:1/credentials"

[accounts.live-c]
uid = "1833220977560002"
[accounts.live-c.credentials]
type = "ram_role_arn"
role_arn = "acs:ram::1833220977560002:role/receiver"
source = "live-a"
external_id = "ext"
"""

ENV = {"A_TOKEN": "tok-a", "A_KEYS": "k1, k2", "A_ID": "id-a", "A_SECRET": "secret-a", "B_TOKEN": "tok-b"}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, **settings: object):  # type: ignore[no-untyped-def]
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return load_accounts(Settings(data_dir=tmp_path, accounts_file=str(path), **settings),  # type: ignore[arg-type]
                         ENV if env is None else env)


def test_good_file(tmp_path: Path) -> None:
    accounts = load(tmp_path, GOOD)
    assert [a.alias for a in accounts] == ["live-a", "live-b", "live-c"]
    a, b, c = (accounts.get(x) for x in ("live-a", "live-b", "live-c"))
    assert (a.uid, a.region, a.ice_endpoint, a.ice_qps) == ("1833220977560000", "cn-shanghai",
                                                            "ice.cn-shanghai.aliyuncs.com", 5.0)
    assert a.callback_token == "tok-a" and a.callback_auth_keys == ("k1", "k2")
    assert a.credentials.secrets == {"access_key_id": "id-a", "access_key_secret": "secret-a"}
    assert b.ice_endpoint == "http://127.0.0.1:9" and b.credentials.options == {"uri": "http://127.0.0.1:1/credentials"}
    assert c.ice_endpoint == "ice.cn-shanghai.aliyuncs.com" and c.callback_token is None
    assert accounts.for_token("tok-b") is b and accounts.for_token("nope") is None
    assert accounts.primary is a  # no `default` in the file: the first account signs the receiver's own bucket
    # Secrets never show in a repr (logs, tracebacks).
    assert "secret-a" not in repr(accounts) and "tok-a" not in repr(accounts)


def test_no_file_is_one_default_account(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, callback_token="t", ice_endpoint="http://x:1")
    accounts = load_accounts(s, {})
    [only] = list(accounts)
    assert (only.alias, only.uid, only.callback_token, only.ice_endpoint, only.credentials.type) == (
        DEFAULT, None, "t", "http://x:1", "default")


def test_callback_token_setting_keeps_an_implied_default_account(tmp_path: Path) -> None:
    accounts = load(tmp_path, GOOD, callback_token="tok-default")
    assert [a.alias for a in accounts] == [DEFAULT, "live-a", "live-b", "live-c"]
    assert accounts.for_token("tok-default").alias == DEFAULT  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "env", "expected"), [
    (GOOD.replace('region = "cn-beijing"', 'region = "cn-beijing"\nregoin = "x"'), ENV,
     "account 'live-b', key 'regoin': unknown key"),
    (GOOD.replace('uri = "http', 'url = "http'), ENV, "account 'live-b', key 'credentials.url': unknown key"),
    (GOOD.replace('"B_TOKEN"', '"A_TOKEN"'), ENV,
     "account 'live-b', key 'callback_token_env': the same callback token as account 'live-a'"),
    (GOOD, {**ENV, "B_TOKEN": "tok-a"}, "account 'live-b', key 'callback_token_env': the same callback token"),
    (GOOD, {k: v for k, v in ENV.items() if k != "A_SECRET"},
     "account 'live-a', key 'credentials.access_key_secret_env': environment variable A_SECRET is not set"),
    (GOOD.replace("[accounts.live-b]", "[accounts.Live_B]").replace("[accounts.live-b.", "[accounts.Live_B."),
     ENV, "account 'Live_B': bad alias"),
    (GOOD.replace('type = "credentials_uri"', 'type = "magic"'), ENV, "account 'live-b', key 'credentials.type'"),
    (GOOD.replace('source = "live-a"', 'source = "nobody"'), ENV, "account 'live-c', key 'credentials.source'"),
    (GOOD.replace('ice_qps = 5', 'ice_qps = 0'), ENV, "account 'live-a', key 'ice_qps'"),
    (GOOD.replace('uid = "1833220977560001"\n', ''), ENV, "account 'live-b', key 'uid': missing"),
    ("[accountz.x]\n", ENV, "key 'accountz': unknown key"),
    ("[accounts.x\n", ENV, "not valid TOML"),
])
def test_bad_file_is_one_line_naming_file_account_and_key(tmp_path: Path, text: str, env: dict[str, str],
                                                          expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"RECEIVER_ACCOUNTS_FILE {tmp_path / 'accounts.toml'}: ")
    assert expected in message
    assert "secret-a" not in message


def test_unreadable_file(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, accounts_file=str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"missing.toml: cannot read the file"):
        load_accounts(s, {})
