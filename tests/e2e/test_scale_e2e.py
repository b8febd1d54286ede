"""The production shape end to end: gunicorn (2 workers) + two Celery worker processes on PostgreSQL and
Redis, thumbnails in (fake) OSS. Callbacks go in over HTTP; the inbox must end with every event done
exactly once, also when Redis loses its queue or a worker is SIGKILLed mid-task."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import func, select

from receiver.db.models import Event, Snapshot, Thumbnail
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame
from receiver.worker.celery import EVENTS_PER_MESSAGE
from tests.support.cluster import AK, BUCKET, SK, THUMB_BUCKET, Cluster, seed
from tests.support.pg_redis import PgServer, RedisServer, pg_server, redis_server, stop_process  # noqa: F401

pytestmark = pytest.mark.slow

DONE_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def frame() -> bytes:
    return make_frame(seed=3, width=320, height=180)


@pytest.fixture(scope="module")
def cluster(pg_server: PgServer, redis_server: RedisServer,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    db = pg_server.create_database()
    with FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss:
        for job in ("job-e2e", "job-redis", "job-kill", "job-term"):
            ice.add_job(job, bucket=BUCKET)
        c = Cluster(pg_server.url(db), redis_server.url, ice, oss, tmp_path_factory.mktemp("cluster"))
        try:
            c.start_web()
            c.start_worker()
            c.start_worker()
            yield c
        finally:
            c.stop()
            pg_server.drop_database(db)


def assert_exactly_once(c: Cluster, job: str, n: int) -> None:
    counts = c.wait_done(job, n, DONE_TIMEOUT)
    assert counts == {"done": n, "snapshots": n}, (counts, c.logs())
    with c.engine.connect() as conn:
        dup = conn.execute(select(func.count()).select_from(
            select(Snapshot.oss_object).where(Snapshot.job_id == job).group_by(Snapshot.oss_object)
            .having(func.count() > 1).subquery())).scalar_one()
        assert dup == 0
        stored = list(conn.execute(select(Thumbnail.storage_key).join(Snapshot, Snapshot.id == Thumbnail.snapshot_id)
                                   .where(Snapshot.job_id == job)).scalars())
    # One width configured: one thumbnail per snapshot, written to the OSS thumbnail store under its prefix.
    in_oss = set(c.oss.keys(THUMB_BUCKET))
    assert len(stored) == n and all(f"t/{k}" in in_oss for k in stored)


def test_500_callbacks_through_gunicorn_and_two_celery_workers_index_exactly_once(
        cluster: Cluster, redis_server: RedisServer, frame: bytes) -> None:  # noqa: F811
    bodies = seed(cluster.ice, cluster.oss, "job-e2e", 500, frame)
    r = redis.Redis.from_url(redis_server.url)
    r.config_resetstat()
    answers = cluster.post(bodies)
    assert {a["status"] for a in answers} == {"accepted"}
    assert_exactly_once(cluster, "job-e2e", 500)
    # Callbacks arrive far faster than two workers index (hundreds a second against tens): the queue backs up
    # and events share messages, most of them several. kombu records each message it hands a worker with one
    # ZADD (its unacked index).
    deliveries = int(r.info("commandstats")["cmdstat_zadd"]["calls"])
    r.close()
    assert 500 / EVENTS_PER_MESSAGE <= deliveries < 500 / 2
    # Exactly once also at the source: every frame was downloaded by exactly one worker, once.
    gets = [r for r in cluster.oss.fetched(BUCKET) if r["method"] == "GET" and "/job-e2e/" in r["key"]]
    assert len(gets) == 500 and len({r["key"] for r in gets}) == 500
    with cluster.engine.connect() as conn:
        assert set(conn.execute(select(Event.attempts).where(Event.job_id == "job-e2e")).scalars()) == {1}
    # An ICE retry of the whole burst records nothing new.
    assert {a["status"] for a in cluster.post(bodies[:20])} == {"duplicate"}
    # gunicorn serves the thumbnails the workers wrote to OSS (streamed: no redirect configured).
    with cluster.engine.connect() as conn:
        sid = conn.execute(select(Snapshot.id).where(Snapshot.job_id == "job-e2e").limit(1)).scalar_one()
    conn2 = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=10)
    conn2.request("GET", f"/v1/snapshots/{sid}/thumbnail")
    resp = conn2.getresponse()
    data = resp.read()
    conn2.close()
    assert resp.status == 200 and resp.getheader("Content-Type") == "image/jpeg" and data[:2] == b"\xff\xd8"


def test_redis_killed_and_restarted_mid_run_loses_nothing(cluster: Cluster, redis_server: RedisServer,  # noqa: F811
                                                          frame: bytes) -> None:
    bodies = seed(cluster.ice, cluster.oss, "job-redis", 150, frame, t0=1796300000000)
    cluster.post(bodies[:50])
    redis_server.kill()  # no persistence: every queued message is gone
    # The web still answers 200 while the broker is down: the inbox is the truth, publishing is best effort.
    assert {a["status"] for a in cluster.post(bodies[50:100])} == {"accepted"}
    redis_server.start()
    cluster.post(bodies[100:])
    assert_exactly_once(cluster, "job-redis", 150)


def test_worker_killed_mid_task_loses_nothing(cluster: Cluster, frame: bytes) -> None:
    bodies = seed(cluster.ice, cluster.oss, "job-kill", 12, frame, t0=1796400000000)
    cluster.oss.latency = 0.3  # slow OSS: both solo workers are certainly mid-task at the same moment
    try:
        threading.Thread(target=cluster.post, args=(bodies,), daemon=True).start()
        deadline = time.monotonic() + 30
        while cluster.counts("job-kill").get("processing", 0) < 2:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.02)
        # Two events processing with two single-slot workers: each worker holds one. Kill one outright.
        victim = cluster.workers[0]
        cluster.kill_worker(victim)
    finally:
        cluster.oss.latency = 0.0
    assert_exactly_once(cluster, "job-kill", 12)
    with cluster.engine.connect() as conn:
        attempts = list(conn.execute(select(Event.attempts).where(Event.job_id == "job-kill")).scalars())
    assert max(attempts) >= 2  # the killed worker's event was claimed again (lease expired) and finished
    cluster.workers.remove(victim)
    cluster.start_worker()


def test_sigterm_lets_a_worker_finish_its_event_before_exiting(cluster: Cluster, frame: bytes) -> None:
    bodies = seed(cluster.ice, cluster.oss, "job-term", 8, frame, t0=1796500000000)
    cluster.oss.latency = 0.3
    try:
        threading.Thread(target=cluster.post, args=(bodies,), daemon=True).start()
        deadline = time.monotonic() + 30
        while cluster.counts("job-term").get("processing", 0) < 2:  # both workers mid-task
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.02)
        leaving = cluster.workers[0]
        leaving.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        assert leaving.wait(timeout=30) == 0
    finally:
        cluster.oss.latency = 0.0
    assert_exactly_once(cluster, "job-term", 8)
    with cluster.engine.connect() as conn:
        attempts = set(conn.execute(select(Event.attempts).where(Event.job_id == "job-term")).scalars())
    assert attempts == {1}  # the in-flight event was finished, not abandoned to its lease
    cluster.workers.remove(leaving)
    cluster.start_worker()


def test_prefork_pool_worker(cluster: Cluster, frame: bytes) -> None:
    """The default pool: children forked from a process that already has an engine and sweeper threads."""
    for w in list(cluster.workers):
        stop_process(w)  # one of them may still be starting up, so its exit status is not checked
        cluster.workers.remove(w)
    cluster.start_worker("prefork", RECEIVER_WORKERS="2")
    cluster.ice.add_job("job-prefork", bucket=BUCKET)
    cluster.post(seed(cluster.ice, cluster.oss, "job-prefork", 40, frame, t0=1796600000000))
    assert_exactly_once(cluster, "job-prefork", 40)
