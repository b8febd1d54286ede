"""The shared GetLiveSnapshotJob cache when something is off, on each tier (a SQLite file, PostgreSQL, Redis):
an entry nobody can read, a job id that looks like another key, a lock holder that died or is merely slow, a
writer whose clock is wrong. Each "process" is a CachedIceGateway with its own tier object, on its own thread,
asking the fake ICE through the real SDK; the fake's request log counts the deployment's ICE calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from receiver.adapters.ice import SdkIceGateway, build_client
from receiver.adapters.ice_cache import CachedIceGateway, SharedJobCache, scoped_job_cache, shared_lock_seconds
from receiver.adapters.job_cache_redis import ENTRY, LOCK, RedisJobCache
from receiver.adapters.ratelimit import MAX_WAIT_S
from receiver.config import Settings
from receiver.db.engine import make_engine
from receiver.db.job_cache import DbJobCache
from receiver.db.migrate import ensure_schema
from receiver.exceptions import JobNotFound
from receiver.sim.fake_ice import FakeIce
from tests.support.builders import AK, SK
from tests.support.pg_redis import RedisServer, pg_head_url, pg_server, redis_server  # noqa: F401

JOBS = ["job-a", "job-b", "job-c"]


@pytest.fixture
def ice() -> Iterator[FakeIce]:
    with FakeIce(access_keys={AK: SK}) as fake:
        for j in JOBS:
            fake.add_job(j)
        fake.latency = 0.05  # a call stays open while the other "processes" arrive
        yield fake


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A factory of tier objects on one store (one per "process"), and a raw handle to the store."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        import redis

        raw = redis.Redis.from_url(server.url)
        raw.flushdb()
        made: list[Any] = []

        def new_redis() -> RedisJobCache:
            made.append(RedisJobCache(server.url))
            return made[-1]

        yield new_redis, raw
        for c in made:
            c.close()
        raw.close()
        return
    url = (request.getfixturevalue("pg_head_url") if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'receiver.db'}")
    engine = make_engine(url)
    ensure_schema(engine)
    yield (lambda: DbJobCache(engine)), engine
    engine.dispose()


def process(ice: FakeIce, shared: SharedJobCache, **kw: Any) -> CachedIceGateway:
    kw.setdefault("lock_seconds", 10.0)
    return CachedIceGateway(SdkIceGateway(build_client(ice.url, AK, SK, timeout_ms=5000)), ttl=60.0,
                            negative_ttl=60.0, shared=scoped_job_cache(shared, "default"), **kw)


def calls(ice: FakeIce, job: str) -> int:
    return sum(1 for r in ice.requests if r["action"] == "GetLiveSnapshotJob" and r["params"].get("JobId") == job)


def ask_at_once(gateways: list[CachedIceGateway], job: str) -> list[tuple[str, float]]:
    """Every gateway asks ``job`` on its own thread; (answer or error name, seconds taken) each."""
    out: list[tuple[str, float]] = [("", 0.0)] * len(gateways)

    def run(i: int, g: CachedIceGateway) -> None:
        t = time.monotonic()
        try:
            answer = g.get_job(job).job_id
        except Exception as e:
            answer = type(e).__name__
        out[i] = (answer, time.monotonic() - t)

    threads = [threading.Thread(target=run, args=(i, g)) for i, g in enumerate(gateways)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def corrupt(tier: Any, key: str) -> None:
    new, raw = tier
    if not isinstance(raw, Engine):  # Redis
        raw.set(ENTRY + key, b"not json", ex=3600)
        return
    new().put(key, {"JobId": "x"}, 3600)  # a live row, then its body spoiled
    with raw.begin() as conn:
        conn.execute(text("UPDATE job_cache SET body = 'not json' WHERE job_id = :k"), {"k": key})


def test_an_unreadable_entry_is_replaced_by_one_answer_from_ice(ice: FakeIce, tier: Any) -> None:
    """Not an outage: the entry is dropped, one process asks ICE and shares the answer. (Taken for the tier being
    down, it used to send every process to ICE until the entry expired, warning each time.)"""
    new, _ = tier
    corrupt(tier, "default:job-b")
    answers = ask_at_once([process(ice, new()) for _ in range(3)], "job-b")
    assert [a for a, _ in answers] == ["job-b"] * 3
    assert calls(ice, "job-b") == 1
    hit = new().get("default:job-b")
    assert hit is not None and hit[1] is not None and hit[1]["JobId"] == "job-b"


def test_a_job_id_that_looks_like_a_lock_does_not_block_that_jobs_answer(ice: FakeIce, tier: Any) -> None:
    """On Redis the entry of "job-a:lock" was job-a's lock key: a forged callback could stall every process
    asking job-a for the lock's length, after which they all asked ICE."""
    new, _ = tier
    with pytest.raises(JobNotFound):
        process(ice, new()).get_job("job-a:lock")
    answers = ask_at_once([process(ice, new()) for _ in range(3)], "job-a")
    assert [a for a, _ in answers] == ["job-a"] * 3
    assert calls(ice, "job-a") == 1 and max(s for _, s in answers) < 5


def test_a_dead_lock_holder_delays_the_others_once_and_one_of_them_asks(ice: FakeIce, tier: Any) -> None:
    """A process took the lock and died: when the lock expires one waiter takes it, the rest read its answer
    (they used to give up when the lock expired and all ask ICE)."""
    new, _ = tier
    assert new().try_lock("default:job-c", 1.0)
    answers = ask_at_once([process(ice, new(), lock_seconds=1.0) for _ in range(4)], "job-c")
    assert [a for a, _ in answers] == ["job-c"] * 4
    assert calls(ice, "job-c") == 1
    assert all(0.5 < s < 5 for _, s in answers)  # waited for the dead lock, not for its own


def test_a_slow_holder_keeps_its_lock_and_the_others_wait_for_its_answer(ice: FakeIce, tier: Any) -> None:
    new, _ = tier
    ice.latency = 1.2  # the holder's ICE call
    answers = ask_at_once([process(ice, new(), lock_seconds=3.0) for _ in range(3)], "job-a")
    assert [a for a, _ in answers] == ["job-a"] * 3
    assert calls(ice, "job-a") == 1


def test_the_lock_outlasts_what_a_holder_may_legitimately_take() -> None:
    """The ICE token bucket's longest wait, then the SDK's connect and read timeouts (it was a fixed 15 s, shorter
    than that at the defaults, so a throttled holder lost its lock and the others asked ICE too)."""
    s = Settings.from_env({"RECEIVER_ICE_TIMEOUT_MS": "8000"})
    assert shared_lock_seconds(s) > MAX_WAIT_S + 2 * 8.0
    gateway = CachedIceGateway.from_settings(SdkIceGateway(build_client("http://127.0.0.1:9", AK, SK)), s)
    assert gateway._lock_seconds == shared_lock_seconds(s)


# Not SQLite: its processes share one host and so one clock; no writer there can disagree with it.
@pytest.mark.parametrize("tier", ["postgresql", "redis"], indirect=True)
def test_an_entry_expires_by_the_tiers_clock_not_the_writers(tier: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer whose clock runs two minutes fast used to stretch a one-second negative entry to two minutes for
    everyone (the entry carried the writer's absolute time). The tier now keeps the time left on its own clock:
    Redis's, PostgreSQL's, or on SQLite the one host's."""
    new, raw = tier
    writer = new()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)
    writer.put("default:job-new", None, 1.0)
    monkeypatch.setattr(time, "time", real)
    hit = new().get("default:job-new")
    assert hit is not None and 0 < hit[0] <= 1.0
    time.sleep(1.2)
    assert new().get("default:job-new") is None


def test_a_lock_is_released_only_by_whoever_took_it(tier: Any) -> None:
    """Tokens are per lock taken, not per process: a prefork child shares its parent's objects, and must not
    release a lock another process took after the first one's expired."""
    new, _ = tier
    first, second = new(), new()
    assert first.try_lock("default:job-a", 0.3)
    time.sleep(0.5)  # expired
    assert second.try_lock("default:job-a", 10.0)
    first.unlock("default:job-a")  # its own lock is long gone: nothing happens
    assert not new().try_lock("default:job-a", 10.0)
    second.unlock("default:job-a")
    assert new().try_lock("default:job-a", 10.0)


TOML = """
[accounts.default]
ice_endpoint = "{ice}"
callback_token_env = "T_DEF_TOKEN"
[accounts.default.credentials]
type = "access_key"
access_key_id_env = "T_DEF_AK"
access_key_secret_env = "T_DEF_SK"

[accounts.shop]
uid = "{uid}"
ice_endpoint = "{ice}"
callback_token_env = "T_SHOP_TOKEN"
[accounts.shop.credentials]
type = "access_key"
access_key_id_env = "T_SHOP_AK"
access_key_secret_env = "T_SHOP_SK"
"""
SHOP_UID, SHOP_AK, SHOP_SK = "1833220977560001", "shopAccessKeyId", "shopAccessKeySecret"


def test_each_account_reads_only_its_own_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Account `default` used to keep bare job ids while the others had ``<alias>:``, and a callback's JobId may
    hold a ``:``: default asking "shop:J1" read shop's answer for J1, and default's "unknown" for "shop:J2" hid
    shop's J2 from shop's own events. Two "processes" share one SQLite file."""
    from receiver.app import build_services

    with FakeIce(access_keys={AK: SK}) as fake:
        fake.add_account(SHOP_UID, {SHOP_AK: SHOP_SK})
        for j in ("J1", "J2"):
            fake.add_job(j, bucket="shop-bucket", owner_uid=SHOP_UID)
        accounts = tmp_path / "accounts.toml"
        accounts.write_text(TOML.format(ice=fake.url, uid=SHOP_UID))
        for k, v in {"T_DEF_TOKEN": "t1", "T_SHOP_TOKEN": "t2", "T_DEF_AK": AK, "T_DEF_SK": SK,
                     "T_SHOP_AK": SHOP_AK, "T_SHOP_SK": SHOP_SK}.items():
            monkeypatch.setenv(k, v)
        s = Settings(data_dir=tmp_path, ice_endpoint=fake.url, accounts_file=str(accounts), reconcile_seconds=0)
        one, two = build_services(s), build_services(s)
        try:
            ensure_schema(one.engine)
            assert one.gateways["shop"].ice.get_job("J1").bucket == "shop-bucket"
            with pytest.raises(JobNotFound):  # default's own ICE does not know "shop:J1"
                two.gateways["default"].ice.get_job("shop:J1")
            with pytest.raises(JobNotFound):
                one.gateways["default"].ice.get_job("shop:J2")
            assert two.gateways["shop"].ice.get_job("J2").job_id == "J2"
        finally:
            for svc in (one, two):
                svc.dispatcher = None
                svc.close()


def test_redis_keeps_entries_and_locks_apart() -> None:
    assert ENTRY != LOCK and not ENTRY.startswith(LOCK) and not LOCK.startswith(ENTRY)
