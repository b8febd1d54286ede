"""Scale-out throughput on this machine: real PostgreSQL + Redis, gunicorn and Celery worker subprocesses.

    .venv/bin/python bench/scale.py [--snapshots 400] [--callbacks 3000]

Prints (1) callbacks/s accepted by gunicorn with 1 and 2 web workers on PostgreSQL (record + publish, no
processing running), and (2) snapshots/s end to end (callback in -> thumbnail in OSS -> indexed) with 1 and
2 Celery worker processes (solo pool each). Ratios are against the first configuration of each pair,
measured in the same run. Needs the postgresql and redis-server packages (.ci/run installs them).
Fake ICE and fake OSS run in this process; frames are 320x180 so the pipeline, not Pillow, is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver.sim.fake_ice import FakeIce  # noqa: E402
from receiver.sim.fake_oss import FakeOss  # noqa: E402
from receiver.sim.frames import make_frame  # noqa: E402
from tests.support.cluster import AK, BUCKET, SK, Cluster, seed  # noqa: E402
from tests.support.pg_redis import PgServer, RedisServer, pg_bindir  # noqa: E402


def run_cluster(pg: PgServer, redis: RedisServer, ice: FakeIce, oss: FakeOss, web_workers: int) -> Cluster:
    db = pg.create_database()
    c = Cluster(pg.url(db), redis.url, ice, oss, Path(tempfile.mkdtemp(prefix="receiver-bench-")),
                web_workers=web_workers)
    c.start_web()
    return c


def callbacks_per_second(pg: PgServer, redis: RedisServer, ice: FakeIce, oss: FakeOss, web_workers: int,
                         n: int, frame: bytes) -> float:
    job = f"bench-cb-{web_workers}"
    ice.add_job(job, bucket=BUCKET)
    bodies = seed(ice, oss, job, n, frame)
    c = run_cluster(pg, redis, ice, oss, web_workers)
    try:
        c.post(bodies[:100], threads=16)  # warm up connections and caches
        t = time.perf_counter()
        c.post(bodies[100:], threads=16)
        elapsed = time.perf_counter() - t
        assert c.counts(job)["pending"] == n
        return (n - 100) / elapsed
    finally:
        c.stop()


def snapshots_per_second(pg: PgServer, redis: RedisServer, ice: FakeIce, oss: FakeOss, workers: int, n: int,
                         frame: bytes) -> float:
    job = f"bench-snap-{workers}"
    ice.add_job(job, bucket=BUCKET)
    bodies = seed(ice, oss, job, n + 20, frame)
    c = run_cluster(pg, redis, ice, oss, 2)
    try:
        for _ in range(workers):
            c.start_worker("solo")
        c.post(bodies[:20])  # warm-up: workers connected, job cached
        c.wait_done(job, 20, 60)
        t = time.perf_counter()
        c.post(bodies[20:], threads=8)
        counts = c.wait_done(job, n + 20, 600)
        elapsed = time.perf_counter() - t
        assert counts.get("done") == n + 20 and counts["snapshots"] == n + 20, counts
        return n / elapsed
    finally:
        c.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshots", type=int, default=400)
    ap.add_argument("--callbacks", type=int, default=3000)
    args = ap.parse_args()
    bindir = pg_bindir()
    if bindir is None:
        sys.exit("PostgreSQL binaries not found (apt-get install postgresql redis-server)")
    import shutil

    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        sys.exit("redis-server not found")
    frame = make_frame(seed=3, width=320, height=180)
    pg, redis = PgServer(bindir).start(), RedisServer(redis_bin).start()
    try:
        with FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss:
            cb = {w: callbacks_per_second(pg, redis, ice, oss, w, args.callbacks, frame) for w in (1, 2)}
            snap = {w: snapshots_per_second(pg, redis, ice, oss, w, args.snapshots, frame) for w in (1, 2)}
    finally:
        redis.stop()
        pg.stop()
    print(f"callbacks accepted by gunicorn on PostgreSQL ({args.callbacks - 100} callbacks, 16 client threads):")
    for w, v in cb.items():
        print(f"  gunicorn {w} worker(s) x 8 threads: {v:8.0f} callbacks/s  ({v / cb[1]:.2f}x)")
    print(f"snapshots end to end ({args.snapshots} callbacks of 320x180 frames, thumbnails to OSS):")
    for w, v in snap.items():
        print(f"  {w} Celery worker process(es), solo pool: {v:8.1f} snapshots/s  ({v / snap[1]:.2f}x)")


if __name__ == "__main__":
    main()
