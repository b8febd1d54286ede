"""The PostgreSQL half of bench/api_queries.py (``--postgres``): read-API latency on day partitions, 1 M vs
20 M snapshots, and dropping a day of partitions vs deleting it row by row. See api_queries.py's docstring."""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, text  # noqa: E402

from receiver.app import create_app  # noqa: E402
from receiver.config import Settings  # noqa: E402
from receiver.db import partitions  # noqa: E402
from receiver.db.engine import make_engine  # noqa: E402
from receiver.db.migrate import upgrade  # noqa: E402
from receiver.services import services  # noqa: E402
from receiver.tiers import DAY_MS, day_of  # noqa: E402
from tests.support.pg_redis import PgServer, pg_bindir  # noqa: E402

JOBS = 200
PER_DAY = 1667  # snapshots per job per day: 200 jobs x 60 days x 1667 = 20.0 M
STEP_MS = DAY_MS // PER_DAY


def fill_day(engine: Engine, day: int) -> None:
    """One day of every job's snapshots (and their thumbnail rows) into that day's partition."""
    with engine.begin() as conn:
        partitions.ensure_day(conn, day)
        # In time order across jobs, as snapshots arrive; ids from the table's own sequence.
        conn.execute(text(
            "INSERT INTO snapshots (job_id, captured_at_ms, kind, oss_endpoint, oss_bucket, oss_object, etag, "
            "size, width, height, sha256, create_timestamp_ms, indexed_at) "
            "SELECT format('job-%s', lpad(j::text, 4, '0')), :day + k * :step + j, 'sequence', "
            "'oss-cn-shanghai.aliyuncs.com', 'bucket', "
            "format('snapshot/job-%s/%s.jpg', lpad(j::text, 4, '0'), :day + k * :step + j), "
            "md5((:day + k * :step + j)::text || j), 300000, 1920, 1080, "
            "'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', :day + k * :step + j, now() "
            "FROM generate_series(0, :per - 1) k, generate_series(0, :jobs - 1) j ORDER BY k, j"),
            {"day": day, "step": STEP_MS, "per": PER_DAY, "jobs": JOBS})
        conn.execute(text(
            "INSERT INTO thumbnails (snapshot_id, captured_at_ms, width, height, format, storage_key, size, etag) "
            "SELECT s.id, s.captured_at_ms, w.width, w.width * 9 / 16, 'jpeg', "
            "format('%s/%s/%s-%s.jpg', substr(s.etag, 1, 2), to_char(to_timestamp(s.captured_at_ms / 1000) "
            "AT TIME ZONE 'UTC', 'YYYYMMDD'), s.etag, w.width), 20000, s.id || '-' || w.width "
            "FROM snapshots s, (VALUES (160), (320)) w(width) "
            "WHERE s.captured_at_ms >= :day AND s.captured_at_ms < :day + :dayms"),
            {"day": day, "dayms": DAY_MS})


def fill(url: str, days: int, now_ms: int) -> tuple[int, float, int]:
    """``days`` whole days ending yesterday; returns (rows, seconds, first day)."""
    engine = make_engine(url)
    upgrade(engine)
    first = day_of(now_ms) - days * DAY_MS
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO jobs (job_id, name, status, stream_url, interval_seconds, oss_endpoint, oss_bucket, "
            "sequence_format, tracked, untracked, created_at) "
            "SELECT format('job-%s', lpad(n::text, 4, '0')), 'stream ' || n, 'Running', 'rtmp://example/live/' || n, "
            "52, 'oss-cn-shanghai.aliyuncs.com', 'bucket', 'snapshot/{JobId}/{UnixTimestamp}.jpg', true, false, "
            "now() FROM generate_series(0, :jobs - 1) n"), {"jobs": JOBS})
        for d in range(days):
            partitions.ensure_day(conn, first + d * DAY_MS)
    for d in range(days):
        fill_day(engine, first + d * DAY_MS)
        print(f"  day {d + 1}/{days} filled", end="\r", flush=True)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        rows = conn.execute(text("SELECT count(*) FROM snapshots")).scalar_one()
    engine.dispose()
    return int(rows), time.perf_counter() - t0, first


def median_ms(fn: Callable[[int], None], n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def measure(url: str, days: int, first: int, iterations: int, tmp: Path) -> dict[str, float]:
    settings = Settings(data_dir=tmp, database_url=url, workers=1, reconcile_seconds=0)
    app = create_app(settings)
    svc = services(app)
    client = app.test_client()
    rnd = random.Random(7)
    jobs = [f"job-{rnd.randrange(JOBS):04d}" for _ in range(iterations)]
    span = days * DAY_MS

    def ok(url: str) -> dict:  # type: ignore[type-arg]
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.status_code, resp.get_data(as_text=True)[:200])
        return resp.get_json()  # type: ignore[no-any-return]

    # A cursor in the middle of each history, as a client paging deep holds it (obtained untimed).
    cursors = [ok(f"/v1/jobs/{j}/snapshots?limit=100&until={first + span // 2 + rnd.randrange(span // 4)}")
               ["next_cursor"] for j in jobs]
    moments = [first + rnd.randrange(span) for _ in jobs]
    for warm in ("/healthz", f"/v1/jobs/{jobs[0]}/snapshots/latest", "/v1/jobs"):
        ok(warm)

    def history(i: int) -> None:
        assert len(ok(f"/v1/jobs/{jobs[i]}/snapshots?limit=100&cursor={cursors[i]}")["items"]) == 100

    out = {
        "healthz": median_ms(lambda i: ok("/healthz"), iterations),
        "history (100 rows, deep, cursor)": median_ms(history, iterations),
        "latest": median_ms(lambda i: ok(f"/v1/jobs/{jobs[i]}/snapshots/latest"), iterations),
        "nearest": median_ms(lambda i: ok(f"/v1/jobs/{jobs[i]}/snapshots/nearest?time={moments[i]}"), iterations),
        "jobs list (100 jobs + latest)": median_ms(lambda i: ok("/v1/jobs"), max(20, iterations // 10)),
    }
    svc.close()
    return out


def drop_vs_delete(url: str, day: int) -> tuple[int, float, float]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM snapshots WHERE captured_at_ms >= :lo AND captured_at_ms < :hi"),
                            {"lo": day, "hi": day + DAY_MS}).scalar_one()
        conn.rollback()
        trans = conn.begin()
        t0 = time.perf_counter()
        for table in partitions.TABLES:
            conn.execute(text(f"DELETE FROM {table} WHERE captured_at_ms >= :lo AND captured_at_ms < :hi"),
                         {"lo": day, "hi": day + DAY_MS})
        deleted = time.perf_counter() - t0
        trans.rollback()  # the same day is dropped next
        with conn.begin():
            t0 = time.perf_counter()
            partitions.drop_day(conn, day)
        dropped = time.perf_counter() - t0
    engine.dispose()
    return int(rows), deleted, dropped


def reuse(args: argparse.Namespace) -> int:
    """--pg-reuse PORT: measure the two databases a filled, still running server holds again (the fill takes
    most of the run); the baseline is the smaller one."""
    import psycopg

    base_url = f"postgresql+psycopg://postgres@127.0.0.1:{args.pg_reuse}"
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{args.pg_reuse}/postgres") as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname ~ '^t[0-9]+_[0-9]+$' "
                                            "ORDER BY oid").fetchall()]
    found = []
    for name in names:
        engine = make_engine(f"{base_url}/{name}")
        with engine.connect() as c:
            n, lo, hi = c.execute(text("SELECT count(*), min(captured_at_ms), max(captured_at_ms) "
                                       "FROM snapshots")).one()
        engine.dispose()
        if n:
            found.append((int(n), name, day_of(lo), (day_of(hi) - day_of(lo)) // DAY_MS + 1))
    (n0, base_db, first0, days0), (n1, big_db, first1, days1) = sorted(found)[:2]
    # Rounds alternate between the two databases, so a busier minute of the machine weighs on both; each
    # figure is the median of the rounds' medians.
    rounds: dict[str, list[dict[str, float]]] = {"baseline": [], "big": []}
    with tempfile.TemporaryDirectory(prefix="bench-api-pg-") as tmp:
        for r in range(args.rounds):
            for label, db, first, days, n in (("baseline", base_db, first0, days0, n0),
                                              ("big", big_db, first1, days1, n1)):
                print(f"round {r + 1}: {label}: {db}, {n:,} snapshots over {days} days", flush=True)
                rounds[label].append(measure(f"{base_url}/{db}", days, first, args.iterations, Path(tmp)))
    results = {label: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for label, ms in rounds.items()}
    results["baseline"]["rows"], results["big"]["rows"] = n0, n1
    day_rows, deleted, dropped = drop_vs_delete(f"{base_url}/{big_db}", first1)
    engine = make_engine(f"{base_url}/{big_db}")
    fill_day(engine, first1)  # put the day back, so the database can be measured again
    engine.dispose()
    report(results, args.iterations, f"reused server, {args.rounds} rounds", day_rows, deleted, dropped)
    return 0


def report(results: dict[str, dict[str, float]], iterations: int, server: str, day_rows: int, deleted: float,
           dropped: float) -> None:
    base, big = results["baseline"], results["big"]
    print(f"\nPostgreSQL ({server}), medians of {iterations} requests (jobs list: {max(20, iterations // 10)})")
    print(f"{'request':<34}{'1M ms':>9}{'big ms':>9}{'big/1M':>8}")
    for name in base:
        if name != "rows":
            print(f"{name:<34}{base[name]:>9.3f}{big[name]:>9.3f}{big[name] / base[name]:>8.2f}")
    print(f"rows: {base['rows']:,.0f} vs {big['rows']:,.0f}")
    print(f"one day ({day_rows:,} snapshots + thumbnails + links): row-by-row DELETE {deleted:.2f} s, "
          f"DETACH + DROP partitions {dropped * 1000:.1f} ms ({deleted / dropped:,.0f}x)")


def run_postgres(args: argparse.Namespace) -> int:
    logging.disable(logging.WARNING)
    if args.pg_reuse:
        return reuse(args)
    bindir = pg_bindir()
    if bindir is None:
        print("PostgreSQL binaries not found", file=sys.stderr)
        return 2
    if args.pg_dir is not None:
        tempfile.tempdir = str(args.pg_dir)  # PgServer makes its folder with mkdtemp
    pg = PgServer(bindir).start()
    now_ms = int(time.time() * 1000)
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-api-pg-") as tmp:
            for label, days in (("baseline", 3), ("big", args.pg_days)):
                url = pg.url(pg.create_database())
                print(f"filling {label}: {days} days x {JOBS} jobs x {PER_DAY}/day ...", flush=True)
                rows, secs, first = fill(url, days, now_ms)
                print(f"{label}: {rows:,} snapshots in {days} day partitions, fill {secs:.0f} s", flush=True)
                results[label] = measure(url, days, first, args.iterations, Path(tmp))
                results[label]["rows"] = rows
            day_rows, deleted, dropped = drop_vs_delete(url, first)
    finally:
        pg.stop()
    report(results, args.iterations, bindir.parent.name, day_rows, deleted, dropped)
    return 0
