"""The live stream in the scale-out shape: gunicorn (2 web processes) and a Celery worker on PostgreSQL and
Redis. The worker writes the messages; each web process learns of them from the outbox and streams them; a
client that reconnects with Last-Event-ID, to whichever web process, gets exactly what it missed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from receiver.db.models import Message
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame
from tests.support.cluster import AK, BUCKET, SK, Cluster, seed
from tests.support.pg_redis import PgServer, RedisServer, pg_server, redis_server  # noqa: F401
from tests.support.sse import SseClient

pytestmark = pytest.mark.slow

JOB = "job-live"


@pytest.fixture(scope="module")
def cluster(pg_server: PgServer, redis_server: RedisServer,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    db = pg_server.create_database()
    with FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss:
        ice.add_job(JOB, bucket=BUCKET)
        # A closed stream keeps its web thread until its next keepalive write fails (up to 15 s): room for the
        # test's reconnects in one process, whichever of the two takes them.
        c = Cluster(pg_server.url(db), redis_server.url, ice, oss, tmp_path_factory.mktemp("cluster-live"),
                    extra_env={"RECEIVER_WEB_THREADS": "16", "RECEIVER_STREAM_CLIENTS": "10"})
        try:
            c.start_web()
            c.start_worker()
            yield c
        finally:
            c.stop()
            pg_server.drop_database(db)


def ids(c: Cluster) -> list[int]:
    with c.engine.connect() as conn:
        return list(conn.execute(select(Message.id).order_by(Message.id)).scalars())


def test_messages_written_by_celery_workers_reach_streams_and_a_resume_gets_exactly_what_was_missed(cluster):
    bodies = seed(cluster.ice, cluster.oss, JOB, 13, make_frame(seed=5, width=160, height=90))
    first = SseClient(cluster.port, f"/v1/stream?job_id={JOB}", timeout=60)  # a web process's first answer is slow
    try:
        assert first.status == 200, cluster.logs()
        cluster.post(bodies[:1])
        [ev] = first.events(1, 30)
        assert ev["event"] == "snapshot.created" and ev["data"]["data"]["job_id"] == JOB
    finally:
        first.close()
    last = int(ev["id"])
    sent = 1
    # Away three times, each time resuming from the same id (so from both web processes, most likely).
    for _ in range(3):
        cluster.post(bodies[sent:sent + 3])
        sent += 3
        assert cluster.wait_done(JOB, sent, 60).get("done") == sent, cluster.logs()
        missed = [i for i in ids(cluster) if i > last]
        c = SseClient(cluster.port, f"/v1/stream?job_id={JOB}", headers={"Last-Event-ID": str(last)}, timeout=60)
        try:
            assert c.status == 200
            got = c.events(len(missed) + 1, 2)
            assert [int(e["id"]) for e in got] == missed, cluster.logs()
            assert {e["event"] for e in got} == {"snapshot.created"}
            # ... and then the live feed: the next message, once.
            cluster.post(bodies[sent:sent + 1])
            sent += 1
            live = c.events(2, 10)
            assert [int(e["id"]) for e in live] == [max(ids(cluster))], (ids(cluster), last, c.comments,
                                                                         cluster.logs())
        finally:
            c.close()
