"""The receiver as a process: a bad accounts file stops it at start with one line; with no accounts file the
default credential chain finds an ALIBABA_CLOUD_CREDENTIALS_URI (hermetic: HOME is empty, ECS metadata off)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.sim.fake_ice import DEFAULT_UID, FakeIce
from receiver.sim.fake_sts import CredentialsUriServer, StsAuthority
from tests.support.pg_redis import free_port

GOOD = """
[accounts.live-a]
uid = "1833220977560000"
callback_token_env = "P_A_TOKEN"
[accounts.live-a.credentials]
type = "access_key"
access_key_id_env = "P_A_ID"
access_key_secret_env = "P_A_SECRET"

[accounts.live-b]
uid = "1833220977560001"
callback_token_env = "P_B_TOKEN"
[accounts.live-b.credentials]
type = "credentials_uri"
uri = "http://127.0.0.1:9/credentials"
"""
ENV = {"P_A_TOKEN": "ta", "P_B_TOKEN": "tb", "P_A_ID": "id", "P_A_SECRET": "the-secret"}


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_CLOUD_", "RECEIVER_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), ALIBABA_CLOUD_ECS_METADATA_DISABLED="true", RECEIVER_DATA_DIR=str(tmp_path / "var"),
               RECEIVER_LOG_LEVEL="WARNING", **extra)
    return env


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "receiver", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


UNKNOWN_KEY = (('region = "x"', 'regoin = "x"'), {}, "account 'live-b', key 'regoin': unknown key")
DUPLICATE_TOKEN = (("", ""), {"P_B_TOKEN": "ta"},
                   "account 'live-b', key 'callback_token_env': the same callback token as account 'live-a'")
UNSET_VARIABLE = (("", ""), {"P_A_SECRET": ""},
                  "account 'live-a', key 'credentials.access_key_secret_env': environment variable P_A_SECRET is "
                  "not set")


@pytest.mark.parametrize(("command", "case"), [
    (["serve"], UNKNOWN_KEY), (["serve"], DUPLICATE_TOKEN), (["serve"], UNSET_VARIABLE),
    (["worker", "--once"], UNKNOWN_KEY), (["reconcile"], DUPLICATE_TOKEN), (["db", "upgrade"], UNSET_VARIABLE),
])
def test_bad_accounts_file_stops_every_command_with_one_line(
        tmp_path: Path, command: list[str], case: tuple[tuple[str, str], dict[str, str], str]) -> None:
    change, env_change, expected = case
    text = GOOD.replace('uid = "1833220977560001"', 'uid = "1833220977560001"\nregion = "x"').replace(*change)
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    if command[0] == "serve":
        command = ["serve", "--port", str(free_port())]
    result = run(command, clean_env(tmp_path, RECEIVER_ACCOUNTS_FILE=str(path), **{**ENV, **env_change}))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: RECEIVER_ACCOUNTS_FILE {path}: {expected}"), result.stderr
    assert "Traceback" not in result.stderr and "the-secret" not in result.stderr + result.stdout


def test_unreadable_accounts_file_stops_serve(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    result = run(["serve", "--port", str(free_port())], clean_env(tmp_path, RECEIVER_ACCOUNTS_FILE=str(path)))
    assert result.returncode != 0
    assert result.stderr.strip() == (f"Error: RECEIVER_ACCOUNTS_FILE {path}: cannot read the file "
                                     "(No such file or directory)")


@pytest.fixture
def sts() -> StsAuthority:
    return StsAuthority()


@pytest.fixture
def ice(sts: StsAuthority) -> Iterator[FakeIce]:
    with FakeIce(access_keys={"unusedId": "unusedSecret"}, sts=sts) as fake:
        fake.add_job("job-chain")
        yield fake


def test_default_chain_with_only_a_credentials_uri(tmp_path: Path, sts: StsAuthority, ice: FakeIce) -> None:
    with CredentialsUriServer(sts, DEFAULT_UID, 3600).start() as uri:
        env = clean_env(tmp_path, ALIBABA_CLOUD_CREDENTIALS_URI=uri.url, RECEIVER_ICE_ENDPOINT=ice.url)
        result = run(["track", "job-chain"], env)
        assert result.returncode == 0, result.stderr
        assert "tracking job-chain" in result.stdout
        result = run(["accounts"], env)
        assert result.returncode == 0, result.stderr
        [header, row] = result.stdout.splitlines()
        assert row.split()[:2] == ["default", "-"] and " default " in row and " ok " in row
        handed = [c.security_token for c in uri.handed_out] + [c.access_key_secret for c in uri.handed_out]
        assert all(secret not in result.stdout for secret in handed)
    # Every ICE call was signed with the URI's temporary credentials, none expired.
    calls = [r for r in ice.requests if r.get("uid") == DEFAULT_UID]
    assert calls and {r["credential"] for r in calls} == {"sts"}
    assert sts.issued[DEFAULT_UID] >= 2 and sts.accepted_expired == 0  # one process each
