"""GetLiveSnapshotJob answers shared by every process of a deployment: on Redis (the broker), on PostgreSQL
and on a SQLite file (no broker). Several spawned processes, each with its own app (as Celery workers,
gunicorn workers or pool children have), ask the same jobs at once; the fake ICE's request log counts the
calls the whole deployment made."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.adapters.ice_cache import CachedIceGateway
from receiver.adapters.job_cache_redis import RedisJobCache
from receiver.app import build_services
from receiver.config import Settings
from receiver.db.job_cache import DbJobCache
from receiver.db.migrate import ensure_schema
from receiver.exceptions import JobNotFound
from receiver.sim.fake_ice import FakeIce
from tests.support.builders import AK, BUCKET, OSS_ENDPOINT, SK
from tests.support.pg_redis import PgServer, RedisServer, pg_head_url, pg_server, redis_server  # noqa: F401

pytestmark = pytest.mark.slow

PROCESSES = 4
JOBS = ["job-a", "job-b", "job-c"]
UNKNOWN = "job-nobody-knows"
WARM = "job-warm-up"


def ask_jobs(settings: Settings, jobs: list[str], go: Any, seconds: float, out: Any) -> None:
    """In a spawned process: its own Services, asking every job in a loop until the time is up."""
    svc = build_services(settings)
    svc.dispatcher = None
    answers: Counter[str] = Counter()
    try:
        # Warm up (SDK client, database and Redis connections) on a job of its own, not counted.
        svc.ice.get_job(WARM)
        out.put("ready")
        go.wait(120)
        end = time.time() + seconds
        while time.time() < end:
            for j in jobs:
                try:
                    answers[svc.ice.get_job(j).job_id] += 1
                except JobNotFound:
                    answers["not found"] += 1
            time.sleep(0.005)
    finally:
        svc.close()
        out.put(dict(answers))


def run_processes(settings: Settings, jobs: list[str], seconds: float) -> list[dict[str, int]]:
    ctx = multiprocessing.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=ask_jobs, args=(settings, jobs, go, seconds, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    # Every process imported and built before the first question (spawning is slow on a busy machine).
    assert [out.get(timeout=120) for _ in procs] == ["ready"] * PROCESSES
    go.set()
    results = [out.get(timeout=60 + seconds) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


@pytest.fixture
def ice() -> Iterator[FakeIce]:
    with FakeIce(access_keys={AK: SK}) as fake:
        for j in [*JOBS, WARM]:
            fake.add_job(j, bucket=BUCKET, endpoint=OSS_ENDPOINT)
        fake.latency = 0.05  # a call stays open while the other processes arrive
        yield fake


def settings_for(tmp_path: Path, ice: FakeIce, database_url: str | None, broker_url: str | None,
                 cache_seconds: float) -> Settings:
    kwargs: dict[str, Any] = {}
    if database_url is not None:
        kwargs["database_url"] = database_url
    return Settings(data_dir=tmp_path, ice_endpoint=ice.url, access_key_id=AK, access_key_secret=SK,
                    broker_url=broker_url, job_cache_seconds=cache_seconds, job_negative_cache_seconds=cache_seconds,
                    reconcile_seconds=0, ice_timeout_ms=5000, **kwargs)


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, ice: FakeIce) -> Iterator[tuple[str | None, str | None]]:
    """(database URL, broker URL) of one deployment: SQLite file, PostgreSQL, or PostgreSQL + Redis."""
    if request.param == "sqlite":
        yield None, None
        return
    url = request.getfixturevalue("pg_head_url")
    broker = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    if broker is not None:
        import redis

        redis.Redis.from_url(broker).flushdb()
    yield url, broker


def prepared(tmp_path: Path, ice: FakeIce, backend: tuple[str | None, str | None], cache_seconds: float) -> Settings:
    s = settings_for(tmp_path, ice, *backend, cache_seconds=cache_seconds)
    svc = build_services(s)
    try:
        ensure_schema(svc.engine)
        assert isinstance(svc.ice, CachedIceGateway)
        # The tier the composition root picked: Redis when the broker is Redis, else the database (seen through
        # the account's scope, `default:` here).
        assert isinstance(getattr(svc.ice.shared, "inner", None), RedisJobCache if backend[1] else DbJobCache)
    finally:
        svc.dispatcher = None
        svc.close()
    return s


def get_job_calls(ice: FakeIce) -> Counter[str]:
    return Counter(r["params"].get("JobId") for r in ice.requests
                   if r["action"] == "GetLiveSnapshotJob" and r["params"].get("JobId") != WARM)


def test_processes_share_one_answer_per_job_and_period(tmp_path: Path, ice: FakeIce,
                                                        backend: tuple[str | None, str | None]) -> None:
    settings = prepared(tmp_path, ice, backend, cache_seconds=1.0)
    results = run_processes(settings, [*JOBS, UNKNOWN], seconds=3.0)
    # Every process got its answers (and JobNotFound for the unknown id) ...
    for answers in results:
        assert all(answers.get(j, 0) >= 3 for j in JOBS), answers
        assert answers.get("not found", 0) >= 3, answers
    # ... and 3 s of questions with a 1 s cache touch at most 4 periods: ICE was asked at most once per job in
    # each, for the four processes together, the unknown id included (the negative cache is shared too).
    # Four processes with caches of their own asked ~4 times per period.
    calls = get_job_calls(ice)
    assert set(calls) == {*JOBS, UNKNOWN}
    assert all(3 <= n <= 4 for n in calls.values()), calls


def test_sqlite_apps_share_the_cache_and_its_invalidation(tmp_path: Path, ice: FakeIce) -> None:
    """The database tier without extra processes: two apps on one SQLite file, as `serve` and a `receiver
    worker` (or a process pool's children) have."""
    settings = settings_for(tmp_path, ice, None, None, cache_seconds=60)
    one, two = build_services(settings), build_services(settings)
    try:
        ensure_schema(one.engine)
        assert one.ice.get_job("job-a").bucket == BUCKET
        assert two.ice.get_job("job-a").bucket == BUCKET  # from the shared row, not from ICE
        with pytest.raises(JobNotFound):
            one.ice.get_job(UNKNOWN)
        with pytest.raises(JobNotFound):
            two.ice.get_job(UNKNOWN)
        assert get_job_calls(ice) == {"job-a": 1, UNKNOWN: 1}
        # Invalidation reaches the shared tier: the next process to miss asks ICE again.
        assert isinstance(one.ice, CachedIceGateway) and isinstance(two.ice, CachedIceGateway)
        one.ice.invalidate("job-a")
        two.ice.invalidate("job-a")
        two.ice.get_job("job-a")
        assert get_job_calls(ice)["job-a"] == 2
    finally:
        for s in (one, two):
            s.dispatcher = None
            s.close()


def test_a_dead_shared_tier_falls_back_to_ice(tmp_path: Path, ice: FakeIce) -> None:
    """Redis unreachable: answers still come (from ICE), the event is not held up by the cache."""
    settings = settings_for(tmp_path, ice, None, "redis://127.0.0.1:1/0", cache_seconds=60)
    svc = build_services(settings)
    try:
        assert svc.ice.get_job("job-b").job_id == "job-b"
        assert svc.ice.get_job("job-b").job_id == "job-b"  # the process's own cache still works
        assert get_job_calls(ice) == {"job-b": 1}
    finally:
        svc.dispatcher = None
        svc.close()
