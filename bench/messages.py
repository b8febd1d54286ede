"""What a Celery worker pays per broker message, apart from the events it carries.

    .venv/bin/python bench/messages.py [--events 2000] [--rounds 3] [--per 8]

One `receiver worker --pool solo` process on real PostgreSQL + Redis consumes --events event ids sent two ways,
alternating, in the same run: one id per message (the baseline, what the publisher sends while the workers keep
up), and --per ids per message (what it sends once the queue backs up: worker/celery.py, events_per_message).
The ids have no row, so each event costs exactly its claim (one UPDATE that finds nothing) and everything
else is the message: kombu's BRPOP and unacked bookkeeping, the task trace, the Flask app context. Prints the
worker's CPU per event both ways, their ratio, and the per-message cost that follows. Needs the postgresql and
redis-server packages (.ci/run installs them).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pipeline import cpu_seconds  # noqa: E402
from receiver.sim.fake_ice import FakeIce  # noqa: E402
from receiver.sim.fake_oss import FakeOss  # noqa: E402
from receiver.worker.celery import QUEUE, TASK_NAME  # noqa: E402
from receiver.worker.celery_messages import RedisTaskPublisher  # noqa: E402
from tests.support.cluster import AK, SK, Cluster  # noqa: E402
from tests.support.pg_redis import PgServer, RedisServer, pg_bindir  # noqa: E402


def drained(client, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    """The queue empty and nothing delivered but unacknowledged (kombu's unacked hash)."""
    deadline = time.monotonic() + timeout
    while client.llen(QUEUE) or client.hlen("unacked"):
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not drain the queue")
        time.sleep(0.02)


def cpu_per_event(client, publisher: RedisTaskPublisher, pid: int, ids: list[int], per: int) -> float:  # type: ignore[no-untyped-def]
    drained(client)
    time.sleep(0.3)
    cpu0 = cpu_seconds(pid)
    publisher.publish([ids[i:i + per] for i in range(0, len(ids), per)], {})
    drained(client)
    time.sleep(0.3)  # the last ack is written before the task's own bookkeeping ends
    return (cpu_seconds(pid) - cpu0) / len(ids) * 1000


def main() -> None:
    import redis

    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per", type=int, default=8, help="event ids per message in the packed runs")
    a = ap.parse_args()
    bindir, redis_bin = pg_bindir(), shutil.which("redis-server")
    if bindir is None or redis_bin is None:
        sys.exit("PostgreSQL or redis-server not found (apt-get install postgresql redis-server)")
    pg, rs = PgServer(bindir).start(), RedisServer(redis_bin).start()
    single: list[float] = []
    packed: list[float] = []
    try:
        db = pg.create_database()
        with FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss, \
                tempfile.TemporaryDirectory() as tmp:
            c = Cluster(pg.url(db), rs.url, ice, oss, Path(tmp))
            client = redis.Redis.from_url(rs.url)
            publisher = RedisTaskPublisher(rs.url, TASK_NAME, QUEUE)
            try:
                worker = c.start_worker("solo")
                # Warm-up (not measured): the worker up, connected, its statements prepared.
                publisher.publish([[10**9 + i] for i in range(200)], {})
                drained(client, timeout=120)
                base = 2 * 10**9
                for r in range(a.rounds):
                    ids = list(range(base + 2 * r * a.events, base + (2 * r + 1) * a.events))
                    single.append(cpu_per_event(client, publisher, worker.pid, ids, 1))
                    packed.append(cpu_per_event(client, publisher, worker.pid, [i + a.events for i in ids], a.per))
                    print(f"round {r + 1}: {single[-1]:.3f} ms per event one per message, "
                          f"{packed[-1]:.3f} ms {a.per} per message", flush=True)
            finally:
                publisher.close()
                client.close()
                c.stop()
    finally:
        rs.stop()
        pg.stop()
    one, many = statistics.median(single), statistics.median(packed)
    message = (one - many) / (1 - 1 / a.per)
    print(f"worker CPU per event (a claim that finds nothing, plus its share of a message), median of {a.rounds}:")
    print(f"  1 per message {one:.3f} ms (baseline); {a.per} per message {many:.3f} ms = {many / one:.2f}x")
    print(f"  so one message costs the worker ~{message:.3f} ms of CPU besides its events, "
          f"and a claim ~{one - message:.3f} ms")


if __name__ == "__main__":
    main()
