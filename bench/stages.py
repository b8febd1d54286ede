"""Where one event's CPU goes: process_event in a loop, each stage's thread CPU measured by wrapping it.

    .venv/bin/python bench/stages.py [--events 300] [--sqlite] [--scratch DIR]

One process, one thread, no HTTP and no broker: the claim, the pre-fetch probe, the OSS GET, the thumbnail
kernel, the signals, the two thumbnail PUTs and the done-transaction of bench/scale.py's events (1080p photo
JPEGs, widths 320 + 160), on a real PostgreSQL started here (or, with --sqlite, the embedded SQLite file and
local thumbnail files). Fake ICE and fake OSS run in this process, on their own threads; ``time.thread_time``
counts only the event's thread. The bare kernel is timed in the same process after the loop, for scale.
Nested stages are indented and counted in their parent too; "(not in a stage)" is the rest of
process_event. Needs the postgresql package unless --sqlite.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pipeline import DISTINCT, kernel_ms  # noqa: E402
from bench.scale import WIDTHS, seed  # noqa: E402
from receiver.sim.fake_ice import FakeIce  # noqa: E402
from receiver.sim.fake_oss import FakeOss  # noqa: E402
from receiver.sim.frames import make_frame  # noqa: E402
from tests.support.cluster import AK, BUCKET, OSS_ENDPOINT, SK, THUMB_BUCKET  # noqa: E402
from tests.support.pg_redis import PgServer, pg_bindir  # noqa: E402

CPU: defaultdict[str, float] = defaultdict(float)
ORDER: list[str] = []  # labels in the order they were wrapped (a nested stage after its parent)
STATEMENTS = [0]


def timed(owner: Any, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding its thread CPU to CPU[label] (nothing if the tree measured
    has no such function: the script also runs against older trees, PYTHONPATH=<tree>)."""
    inner: Callable[..., Any] | None = getattr(owner, name, None)
    if inner is None:
        return
    ORDER.append(label)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            CPU[label] += time.thread_time() - t

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--sqlite", action="store_true", help="the embedded shape: SQLite file, local thumbnails")
    ap.add_argument("--scratch", default=None, help="folder for the data directory (see bench/RESULTS.md, Machine)")
    a = ap.parse_args()

    from sqlalchemy import Connection

    import receiver.worker.index as index
    import receiver.worker.pipeline as pipeline
    from receiver.app import build_services
    from receiver.config import Settings
    from receiver.db.migrate import ensure_schema
    from receiver.intake.parse import parse_callback

    frames = [make_frame(seed=i, kind="photo") for i in range(DISTINCT)]
    pg = None if a.sqlite else PgServer(pg_bindir() or Path("/nonexistent")).start()
    try:
        with FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss:
            for b in (BUCKET, THUMB_BUCKET):
                oss.create_bucket(b)
            env = {"RECEIVER_ICE_ENDPOINT": ice.url, "ALIBABA_CLOUD_ACCESS_KEY_ID": AK,
                   "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SK, "RECEIVER_OSS_ENDPOINT_MAP": f"{OSS_ENDPOINT}={oss.url}",
                   "RECEIVER_THUMBNAIL_WIDTHS": WIDTHS, "RECEIVER_DATA_DIR": tempfile.mkdtemp(dir=a.scratch),
                   "RECEIVER_RECONCILE_SECONDS": "0", "RECEIVER_LOG_LEVEL": "WARNING"}
            if pg is not None:
                env["RECEIVER_DATABASE_URL"] = pg.url(pg.create_database(template=pg.migrated_template()))
                env["RECEIVER_THUMBNAIL_STORE"] = f"oss://{THUMB_BUCKET}/t?endpoint={OSS_ENDPOINT}"
            svc = build_services(Settings.from_env(env))
            svc.dispatcher = None  # never started: this loop is the only worker
            ensure_schema(svc.engine)
            warm = 20
            bodies = seed(ice, oss, "bench-stages", frames, a.events + warm)
            ids = svc.intake.record([it for body in bodies for it in parse_callback(body)[0]]).new_ids
            for i in ids[:warm]:  # connections, prepared statements, the job cache
                pipeline.process_event(svc, i)
            timed(pipeline, "process_event", "process_event")
            timed(pipeline, "_claim", "claim (UPDATE .. RETURNING)")
            timed(index, "_existing", "pre-fetch probe (SELECT; in the claim on PostgreSQL)")
            timed(svc.source, "get", "OSS GET (285 KB)")
            timed(index, "make_thumbnails", "thumbnail kernel (decode, 2 resizes, 2 encodes)")
            timed(index, "snapshot_columns", "signals (luma, dHash, BlurHash)")
            timed(svc.thumbs, "put", "thumbnail PUTs (2)")
            timed(pipeline, "_finish_done", "done-transaction")
            if pg is not None:
                # One object per event on PostgreSQL: the BYPASS (worker/index_postgres.py), two statements.
                timed(pipeline, "postgres_done_bypass", "  lock + id, then one statement of CTEs")
            else:
                timed(pipeline, "write_index", "  rows: lock, look-up, snapshot, thumbnails, message")
                timed(index, "announce_snapshot", "    of which snapshot.created (body + INSERT)")
                timed(pipeline, "_set_status", "  event status")
                timed(pipeline, "_link", "  event link")
            execute, driver_sql = Connection.execute, Connection.exec_driver_sql

            def counting(self: Connection, *args: Any, **kwargs: Any) -> Any:
                STATEMENTS[0] += 1
                return execute(self, *args, **kwargs)

            def counting_sql(self: Connection, *args: Any, **kwargs: Any) -> Any:
                STATEMENTS[0] += 1
                return driver_sql(self, *args, **kwargs)

            Connection.execute, Connection.exec_driver_sql = counting, counting_sql  # type: ignore[method-assign]
            statuses = [pipeline.process_event(svc, i).status for i in ids[warm:]]
            Connection.execute, Connection.exec_driver_sql = execute, driver_sql  # type: ignore[method-assign]
            kernel = kernel_ms(frames, 60)
            svc.close()
    finally:
        if pg is not None:
            pg.stop()
    n = a.events
    done = sum(1 for st in statuses if st == "done")
    if done != n:
        sys.exit(f"{done} of {n} events done")
    total = CPU.pop("process_event")
    print(f"{'PostgreSQL, OSS thumbnail store' if pg is not None else 'SQLite file, local thumbnails'}; {n} events; "
          f"bare kernel in this process {kernel:.2f} ms; {STATEMENTS[0] / n:.1f} statements per event "
          "(Connection.execute and exec_driver_sql calls, BEGIN/COMMIT not counted)")
    per = total / n * 1000
    print(f"{'process_event, thread CPU per event':52s} {per:6.2f} ms = {kernel / per:.2f}x the kernel's")
    top = sum(v for k, v in CPU.items() if not k.startswith(" "))
    for k in ORDER[1:]:
        v = CPU[k]
        print(f"  {k:50s} {v / n * 1000:6.2f} ms  {v / total * 100:5.1f} %")
    print(f"  {'(not in a stage)':50s} {(total - top) / n * 1000:6.2f} ms  {(total - top) / total * 100:5.1f} %")


if __name__ == "__main__":
    main()
