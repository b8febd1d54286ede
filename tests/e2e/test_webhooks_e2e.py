"""Webhooks across processes: `receiver serve` SIGKILLed right after callbacks and restarted, and the scale-out
shape (gunicorn + Celery workers on PostgreSQL and Redis). A real subscriber on loopback verifies every
request with standardwebhooks; every snapshot must be announced, none twice unless retried under the same
webhook-id, none for a snapshot that does not exist."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select

from receiver.db.models import Snapshot
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame
from tests.support.builders import AK, SK, callback_body, put_snapshot
from tests.support.cluster import BUCKET, Cluster, seed
from tests.support.pg_redis import (  # noqa: F401
    PgServer,
    RedisServer,
    free_port,
    pg_server,
    redis_server,
    stop_process,
    wait_healthy,
)
from tests.support.serve import ServeProcess
from tests.support.subscriber import Subscriber

pytestmark = pytest.mark.slow
T0 = 1796212805123
ALL = ["snapshot.created", "stream.health_changed", "event.failed"]
WEBHOOK_ENV = {"RECEIVER_WEBHOOK_ALLOW_PRIVATE": "1", "RECEIVER_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.5,1,1,1"}


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_json(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def subscribe(base: str, hooks: Subscriber, path: str) -> dict:
    sub = http_json("POST", f"{base}/v1/subscriptions", {"url": hooks.url + path, "events": ALL})
    hooks.secrets[path] = sub["secret"]
    return sub


def snapshot_ids(engine: Engine) -> set[str]:
    with engine.connect() as c:
        return {str(i) for i in c.execute(select(Snapshot.id)).scalars()}


def announced(hooks: Subscriber, path: str) -> dict[str, set[str]]:
    """snapshot id -> the webhook-ids it was announced under (2xx answers, verified requests only)."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in hooks.at(path):
        assert r.verified, r.headers
        if r.answered < 300 and r.payload["type"] == "snapshot.created":
            out[r.payload["data"]["id"]].add(r.webhook_id)
    return out


def assert_each_snapshot_announced_once(hooks: Subscriber, path: str, engine: Engine, n: int) -> None:
    ids = snapshot_ids(engine)
    assert len(ids) == n
    wait_for(lambda: set(announced(hooks, path)) >= ids, 60, "every snapshot announced")
    time.sleep(1.0)  # anything still in flight would show up now
    got = announced(hooks, path)
    assert set(got) == ids  # none for a snapshot that does not exist
    assert all(len(mids) == 1 for mids in got.values())  # a repeat only ever under the same webhook-id


@pytest.fixture
def serve(tmp_path: Path, fake_ice: FakeIce, fake_oss: FakeOss) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path, fake_ice, fake_oss, RECEIVER_WORKERS="2", **WEBHOOK_ENV)
    yield srv
    srv.stop()


@pytest.fixture
def hooks() -> Iterator[Subscriber]:
    with Subscriber() as s:
        yield s


def test_sigkill_of_serve_right_after_callbacks_loses_and_invents_no_announcement(serve, hooks, fake_ice,
                                                                                   fake_oss, tmp_path):
    hooks.answers["/all"] = [500, 204]  # one retry on the way, too
    serve.start()
    subscribe(serve.base, hooks, "/all")
    n = 12
    for i in range(n):
        key = put_snapshot(fake_oss, fake_ice, T0 + i * 1000, make_frame(seed=i + 1, width=320, height=180))
        serve.post(callback_body(key, T0 + i * 1000))
    serve.kill()  # right after the callbacks: events, snapshots, messages and deliveries in every state
    serve.start()
    engine = create_engine(f"sqlite:///{tmp_path / 'receiver.db'}")
    try:
        wait_for(lambda: len(snapshot_ids(engine)) == n, 60, "every snapshot indexed")
        assert_each_snapshot_announced_once(hooks, "/all", engine, n)
    finally:
        engine.dispose()


@pytest.fixture
def cluster(pg_server: PgServer, redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:  # noqa: F811
    db = pg_server.create_database()
    with FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss:
        ice.add_job("job-hooks", bucket=BUCKET)
        c = Cluster(pg_server.url(db), redis_server.url, ice, oss, tmp_path, extra_env=WEBHOOK_ENV)
        try:
            c.start_web()
            yield c
        finally:
            c.stop()
            pg_server.drop_database(db)


def test_postgres_and_celery_workers_deliver_every_snapshot_once_also_across_a_worker_kill(cluster, hooks):
    hooks.answers["/pg"] = [500, 204]
    base = f"http://127.0.0.1:{cluster.port}"
    subscribe(base, hooks, "/pg")  # the first request also waits for gunicorn's workers to build the app
    first = cluster.start_worker()
    cluster.start_worker()
    n = 30
    bodies = seed(cluster.ice, cluster.oss, "job-hooks", n, make_frame(seed=5, width=320, height=180))
    cluster.post(bodies[: n // 2])
    cluster.kill_worker(first)  # mid-way: its claims (events and deliveries) run out and are taken over
    cluster.post(bodies[n // 2:])
    counts = cluster.wait_done("job-hooks", n, 120)
    assert counts == {"done": n, "snapshots": n}, (counts, cluster.logs())
    assert_each_snapshot_announced_once(hooks, "/pg", cluster.engine, n)
