"""Reconcile benchmark (run on demand, not a test).

    .venv/bin/python bench/reconcile.py [--files 10000] [--workers 8] [--profile-files 2000]

Fake ICE and fake OSS (real SDK clients, signed requests, loopback HTTP) hold N sequence files of a
5-second job (320x180 JPEGs, ~14 hours, so the sweep spans one or two day windows); no callbacks. Measured
in one run:

  baseline   listing only: iter_files over the whole span (what every reconcile pass costs at least)
  full       `receiver reconcile` as the CLI runs it: list, queue, process every file on --workers threads
  again      the same pass again: everything is already indexed (the steady state of the periodic sweep)
  stages     --profile-files of them on one thread, wall time per stage measured at its boundary
             (wrapped ICE/OSS/store calls and image functions, SQLAlchemy cursor events for SQL)

Ratios are against the baseline. The fakes run in this process (server threads), so their cost shares the
GIL with the receiver; treat absolute numbers as an upper bound for a real deployment.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver.adapters.ice import iter_files  # noqa: E402
from receiver.app import create_app  # noqa: E402
from receiver.config import Settings  # noqa: E402
from receiver.db.migrate import ensure_schema  # noqa: E402
from receiver.ops.reconcile import Reconciler, Tally  # noqa: E402
from receiver.ops.replay import run_events  # noqa: E402
from receiver.ops.tracking import track  # noqa: E402
from receiver.services import Services, services  # noqa: E402
from receiver.sim.fake_ice import FakeIce  # noqa: E402
from receiver.sim.fake_oss import FakeOss  # noqa: E402
from receiver.sim.frames import make_frame  # noqa: E402
from receiver.timeutil import now_ms  # noqa: E402

AK, SK, ENDPOINT, BUCKET = "benchAk", "benchSk", "oss-cn-shanghai.aliyuncs.com", "bench"



class Clock:
    """Wall time per stage, accumulated by wrapping the boundaries (single thread, so times add up)."""

    def __init__(self) -> None:
        self.secs: dict[str, float] = {}

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.secs[stage] = self.secs.get(stage, 0.0) + time.perf_counter() - t
        return timed_call


def instrument(svc: Services, clock: Clock) -> None:
    """Time each stage at its boundary: the ICE and store objects on svc, the image functions in worker/index.py."""
    import receiver.worker.index as index

    svc.ice.list_files = clock.wrap("ICE listing (ListLiveSnapshotFiles)", svc.ice.list_files)  # type: ignore[method-assign]
    svc.ice.get_job = clock.wrap("ICE GetLiveSnapshotJob (cached)", svc.ice.get_job)  # type: ignore[method-assign]
    svc.source.get = clock.wrap("OSS GET (oss2 over loopback, CRC64 check)", svc.source.get)  # type: ignore[method-assign]
    svc.thumbs.put = clock.wrap("thumbnail file writes", svc.thumbs.put)  # type: ignore[method-assign]
    index.make_thumbnails = clock.wrap("thumbnailing (Pillow)", index.make_thumbnails)  # type: ignore[attr-defined]
    index.snapshot_columns = clock.wrap("image signals (dhash, blurhash...)",  # type: ignore[attr-defined]
                                        index.snapshot_columns)

    @event.listens_for(svc.engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any) -> None:
        conn.info.setdefault("t0", []).append(time.perf_counter())

    @event.listens_for(svc.engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any) -> None:
        t = time.perf_counter() - conn.info["t0"].pop()
        clock.secs["database: SQL statements (incl. BEGIN IMMEDIATE waits)"] = (
            clock.secs.get("database: SQL statements (incl. BEGIN IMMEDIATE waits)", 0.0) + t)

    sql = "database: SQL statements (incl. BEGIN IMMEDIATE waits)"
    mark: dict[str, float] = {}

    # COMMIT goes through the DBAPI, not a cursor: time the ORM commit phase, minus the SQL counted above.
    @event.listens_for(svc.sessions, "before_commit")
    def _before_commit(session: Any) -> None:
        mark["t"], mark["sql"] = time.perf_counter(), clock.secs.get(sql, 0.0)

    @event.listens_for(svc.sessions, "after_commit")
    def _after_commit(session: Any) -> None:
        t = time.perf_counter() - mark["t"] - (clock.secs.get(sql, 0.0) - mark["sql"])
        clock.secs["database: ORM flush + COMMIT"] = clock.secs.get("database: ORM flush + COMMIT", 0.0) + t


def setup(n: int, root: Path, workers: int, label: str) -> tuple[Services, FakeIce, FakeOss, list[str]]:
    ice = FakeIce(access_keys={AK: SK}).start()
    oss = FakeOss(access_keys={AK: SK}).start()
    oss.create_bucket(BUCKET)
    job = f"bench-{label}"
    ice.add_job(job, bucket=BUCKET, endpoint=ENDPOINT, interval=5)
    frame = make_frame(seed=7, width=320, height=180)
    last = now_ms() - 120_000
    keys = []
    for i in range(n):
        ms = last - (n - 1 - i) * 5000
        key = f"snapshot/{job}/{ms}.jpg"
        oss.put(BUCKET, key, frame)
        ice.add_file(job, key, ms)
        keys.append(key)
    settings = Settings(data_dir=root / label, ice_endpoint=ice.url, access_key_id=AK, access_key_secret=SK,
                        oss_endpoint_map={ENDPOINT: oss.url}, workers=workers, reconcile_lookback_days=1,
                        log_level="WARNING")
    app = create_app(settings)
    svc: Services = services(app)
    ensure_schema(svc.engine)
    track(svc, job)
    return svc, ice, oss, keys


def timed(fn: object) -> tuple[float, Tally]:
    start = time.perf_counter()
    tally = fn()  # type: ignore[operator]
    return time.perf_counter() - start, tally


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--profile-files", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        svc, ice, oss, keys = setup(args.files, root, args.workers, "full")
        job = Reconciler(svc).tracked_jobs()[0]
        base_t, _ = timed(lambda: sum(1 for _ in iter_files(svc.ice, job, now_ms() - 86_400_000, now_ms())))
        full_t, tally = timed(lambda: Reconciler(svc, execute=lambda ids: run_events(svc, ids)).run())
        assert tally.new == args.files and not tally.errors, tally.summary()
        again_t, again = timed(lambda: Reconciler(svc, execute=lambda ids: run_events(svc, ids)).run(
            since_ms=now_ms() - 86_400_000))
        assert again.new == 0, again.summary()
        svc.close()
        ice.stop()
        oss.stop()

        print(f"reconciling {args.files} files, {args.workers} worker threads (fake ICE + fake OSS, loopback)")
        print(f"  baseline: list only        {base_t:8.2f} s   1.0x   ({ice_pages(args.files)} pages)")
        print(f"  full reconcile             {full_t:8.2f} s  {full_t / base_t:5.1f}x   "
              f"{args.files / full_t:7.0f} files/s")
        print(f"  second pass (all indexed)  {again_t:8.2f} s  {again_t / base_t:5.1f}x")

        n = args.profile_files
        psvc, pice, poss, _ = setup(n, root, 1, "stages")
        clock = Clock()
        instrument(psvc, clock)
        start = time.perf_counter()
        ptally = Reconciler(psvc, execute=lambda ids: run_events(psvc, ids, workers=1)).run()
        total = time.perf_counter() - start
        assert ptally.new == n, ptally.summary()
        print(f"\nwhere the time goes: {n} files on one thread, {total:.2f} s "
              f"({1000 * total / n:.2f} ms/file, {n / total:.0f} files/s)")
        rows = dict(clock.secs)
        # SourceStore.get includes nothing else we time; the SQL hook only sees cursor time, so ORM work,
        # event JSON and claim bookkeeping stay in "other".
        rows["other: ORM, SQLAlchemy compile, claims, Python"] = max(0.0, total - sum(rows.values()))
        for stage, secs in sorted(rows.items(), key=lambda kv: -kv[1]):
            print(f"  {stage:<55} {secs:7.2f} s  {100 * secs / total:5.1f}%  {1000 * secs / n:6.2f} ms/file")
        psvc.close()
        pice.stop()
        poss.stop()


def ice_pages(n: int) -> int:
    return -(-n // 100)


if __name__ == "__main__":
    main()
