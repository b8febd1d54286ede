"""Read-API latency on a big index: history page (deep, via cursor), latest, nearest, jobs list vs /healthz.

Fills a SQLite database with --rows snapshot rows (default 10 million) for --jobs jobs (default 1,000),
two thumbnail rows each, in bulk (INSERT ... SELECT over a recursive CTE, in job-major key order), then
measures median latency through the Flask app (test client: routing, auth hooks, SQL, JSON) of:

  history   GET /v1/jobs/<j>/snapshots?limit=100&cursor=<c>, the cursor pointing mid-history
  latest    GET /v1/jobs/<j>/snapshots/latest
  nearest   GET /v1/jobs/<j>/snapshots/nearest?time=<random moment in the range>
  jobs      GET /v1/jobs (first page: 100 jobs, each with its latest snapshot and health)
  healthz   GET /healthz, the baseline: the same stack without any SQL

    .venv/bin/python bench/api_queries.py                  # 10M rows (a few minutes of fill)
    .venv/bin/python bench/api_queries.py --rows 1000000   # quicker
    .venv/bin/python bench/api_queries.py --db /tmp/big.db --reuse   # measure an existing fill again

With --postgres: a throwaway PostgreSQL server (tests/support/pg_redis.py; its data directory under
--pg-dir, default the system temp folder) and the partitioned schema of migration 0007. Two databases, the
same 200 jobs at the same rate (one snapshot per job every 51.8 s, two thumbnail rows each): the baseline
with 3 days (1 M snapshots) and the big one with --pg-days days (default 60: 20 M snapshots), each day its
own partition, filled server-side (INSERT ... SELECT generate_series). The same requests are timed on both
and reported as big / baseline. Then, on the big database, one day goes two ways in the same run: a
row-by-row DELETE of its snapshots, thumbnails and links (in a transaction rolled back afterwards), and
DETACH + DROP of its partitions (ops/retention.py's way).

    .venv/bin/python bench/api_queries.py --postgres --pg-dir /var/tmp
"""

from __future__ import annotations

import argparse
import logging
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from receiver.app import create_app  # noqa: E402
from receiver.config import Settings  # noqa: E402
from receiver.db.migrate import ensure_schema  # noqa: E402
from receiver.services import services  # noqa: E402

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STEP_MS = 5000  # a 5-second job interval


def fill(db: Path, rows: int, jobs: int) -> float:
    per = rows // jobs
    t0 = time.perf_counter()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1000000")  # 1 GB: index builds stay in memory
    con.execute("BEGIN")
    con.execute(
        "INSERT INTO jobs (job_id, name, status, stream_url, interval_seconds, oss_endpoint, oss_bucket, "
        "sequence_format, tracked, created_at) "
        "WITH RECURSIVE j(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM j WHERE n < ? - 1) "
        "SELECT printf('job-%04d', n), printf('stream %d', n), 'Running', 'rtmp://example/live/' || n, 5, "
        "'oss-cn-shanghai.aliyuncs.com', 'bucket', 'snapshot/{JobId}/{UnixTimestamp}.jpg', 1, "
        "'2026-01-01 00:00:00.000000' FROM j",
        (jobs,),
    )
    # The secondary index is built once after the fill (a sorted build), not maintained row by row.
    con.execute("DROP INDEX IF EXISTS ix_snapshots_job_time")
    con.execute(
        "INSERT INTO snapshots (id, job_id, captured_at_ms, kind, oss_endpoint, oss_bucket, oss_object, etag, "
        "size, width, height, sha256, create_timestamp_ms, indexed_at) "
        "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < ? - 1) "
        "SELECT n + 1, printf('job-%04d', n / ?1b), ?2b + (n % ?1b) * ?3b, 'sequence', "
        "'oss-cn-shanghai.aliyuncs.com', 'bucket', "
        "printf('snapshot/job-%04d/%d.jpg', n / ?1b, ?2b + (n % ?1b) * ?3b), printf('E%d', n), 300000, 1920, "
        "1080, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', ?2b + (n % ?1b) * ?3b, "
        "'2026-01-01 00:00:00.000000' FROM s".replace("?1b", "?2").replace("?2b", "?3").replace("?3b", "?4"),
        (per * jobs, per, BASE_MS, STEP_MS),
    )
    con.execute(
        "INSERT INTO thumbnails (snapshot_id, captured_at_ms, width, height, format, storage_key, size, etag) "
        "SELECT s.id, s.captured_at_ms, w.width, w.width * 9 / 16, 'jpeg', "
        "'k/' || s.id || '/' || w.width || '.jpg', 20000, "
        "printf('%d-%d', s.id, w.width) FROM snapshots s, (SELECT 160 AS width UNION ALL SELECT 320) w "
        "ORDER BY s.id, w.width"
    )
    con.execute("CREATE INDEX ix_snapshots_job_time ON snapshots (job_id, captured_at_ms, id)")
    con.execute("COMMIT")
    con.execute("ANALYZE")
    con.close()
    return time.perf_counter() - t0


def median_ms(fn: Callable[[int], None], n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--postgres", action="store_true", help="PostgreSQL partitions: 1 M vs --pg-days of rows")
    ap.add_argument("--pg-days", type=int, default=60)
    ap.add_argument("--pg-dir", type=Path, default=None, help="where the PostgreSQL data directory goes")
    ap.add_argument("--pg-reuse", type=int, default=None, help="port of a server an earlier run filled: measure")
    ap.add_argument("--rounds", type=int, default=3, help="--pg-reuse: rounds alternating the two databases")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--db", type=Path, help="database file (default: a temporary one, deleted afterwards)")
    ap.add_argument("--reuse", action="store_true", help="measure an existing --db without refilling it")
    args = ap.parse_args()
    if args.postgres:
        from api_queries_pg import run_postgres  # the PostgreSQL half, beside this file

        return run_postgres(args)
    if args.rows // args.jobs < 300:
        ap.error("need at least 300 rows per job for a deep history page")
    logging.disable(logging.WARNING)
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-api-")
        args.db = Path(tmp.name) / "receiver.db"
    settings = Settings(data_dir=args.db.parent, database_url=f"sqlite:///{args.db}", workers=1,
                        reconcile_seconds=0)
    app = create_app(settings)
    svc = services(app)
    if not args.reuse:
        if args.db.exists():
            args.db.unlink()
        ensure_schema(svc.engine)
        svc.engine.dispose()
        print(f"filling {args.rows:,} snapshot rows for {args.jobs:,} jobs ...", flush=True)
        secs = fill(args.db, args.rows, args.jobs)
        print(f"fill: {secs:.1f} s ({args.rows / secs:,.0f} rows/s), file {args.db.stat().st_size / 1e9:.2f} GB")
    with svc.engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT max(id) FROM snapshots").scalar_one()
    per = total // args.jobs
    client = app.test_client()
    rnd = random.Random(7)
    jobs = [f"job-{rnd.randrange(args.jobs):04d}" for _ in range(args.iterations)]

    def ok(url: str) -> dict:  # type: ignore[type-arg]
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.status_code, resp.get_data(as_text=True)[:200])
        return resp.get_json()  # type: ignore[no-any-return]

    # Cursors into the middle of each history, obtained untimed, as a client paging deep would hold them.
    cursors = []
    for j in jobs:
        # Row index from the start (desc order): at least 200 rows precede it, so two full pages exist.
        at = min(per, max(201, per // 2 + rnd.randrange(-per // 4, per // 4 + 1)))
        mid = BASE_MS + at * STEP_MS
        cursors.append(ok(f"/v1/jobs/{j}/snapshots?limit=100&until={mid}")["next_cursor"])
    moments = [BASE_MS + rnd.randrange(per * STEP_MS) for _ in jobs]
    for warm in ("/healthz", f"/v1/jobs/{jobs[0]}/snapshots/latest", "/v1/jobs"):
        ok(warm)

    def history(i: int) -> None:
        assert len(ok(f"/v1/jobs/{jobs[i]}/snapshots?limit=100&cursor={cursors[i]}")["items"]) == 100

    results = {
        "healthz": median_ms(lambda i: ok("/healthz"), args.iterations),
        "history (100 rows, deep, cursor)": median_ms(history, args.iterations),
        "latest": median_ms(lambda i: ok(f"/v1/jobs/{jobs[i]}/snapshots/latest"), args.iterations),
        "nearest": median_ms(lambda i: ok(f"/v1/jobs/{jobs[i]}/snapshots/nearest?time={moments[i]}"),
                             args.iterations),
        "jobs list (100 jobs + latest)": median_ms(lambda i: ok("/v1/jobs"), max(20, args.iterations // 10)),
    }
    base = results["healthz"]
    print(f"\n{total:,} snapshots, {args.jobs:,} jobs ({per:,} each); medians of {args.iterations} requests")
    print(f"{'endpoint':<34}{'median ms':>10}{'x healthz':>11}")
    for name, ms in results.items():
        print(f"{name:<34}{ms:>10.3f}{ms / base:>11.1f}")
    svc.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
