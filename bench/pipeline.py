"""End to end through HTTP: callbacks in, thumbnails stored and snapshots indexed, next to the bare kernel.

    .venv/bin/python bench/pipeline.py [--frames 200] [--workers 1,2] [--kind photo] [--rounds 1] [--direct]
                                       [--pool thread|process] [--scratch FOLDER]

Fake ICE and fake OSS run in this process (real SDK clients, signed requests over loopback); the service is
`python -m receiver serve` in a subprocess (waitress, SQLite WAL, thumbnails to a local folder, default
widths and format) with RECEIVER_WORKERS=1, then 2. Each run seeds --frames distinct 1920x1080 JPEGs of
--kind into the fake OSS and ICE's file list, posts one callback per frame (8 client threads) and times
from the first post until every frame is indexed (snapshot rows counted in the database). Each server
first indexes WARM_UP frames of another job (the first of them timed on its own: one-off costs after
start), so the rate is the steady one, as in --direct.

The baseline, measured in the same run and interleaved with the end-to-end runs (kernel, e2e, kernel, ...):
`make_thumbnails` on the same frames, one thread, no I/O. The figure is end-to-end frames/s per worker
over kernel frames/s (target >= 0.6), and the 2-worker rate over the 1-worker rate.

--direct adds, each round, the same pipeline without the server: process_event in a loop in a spawned
process (fakes still here, over loopback), and the kernel timed in that process on the same frames. The gap
between the two figures is what HTTP intake, the dispatcher and the server's other threads cost.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from receiver.config import Settings  # noqa: E402
from receiver.media.thumbnails import make_thumbnails  # noqa: E402
from receiver.sim.fake_ice import FakeIce  # noqa: E402
from receiver.sim.fake_oss import FakeOss  # noqa: E402
from receiver.sim.frames import make_frame  # noqa: E402
from tests.support.cluster import AK, BUCKET, OSS_ENDPOINT, SK, callback  # noqa: E402
from tests.support.pg_redis import free_port, wait_healthy  # noqa: E402

WARM_UP = 10  # events processed after start, before the rate is timed
DISTINCT = 16  # distinct frames, cycled (generating a 1080p frame costs more than thumbnailing it)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU of the server and its worker processes (RECEIVER_WORKER_POOL=process), while they run."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += cpu_seconds(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def create_us(folder: str, n: int = 200) -> float:
    """Median us to create, write (12 KB) and close a new file in ``folder``: most of a thumbnail file's cost
    (the store also renames it into place). It varies with the file system's state (see --scratch), so each
    run prints it next to its rates. The files stay until the run's data is removed (deleting them now would
    slow the next creations)."""
    probe = tempfile.mkdtemp(prefix="create-probe-", dir=folder)
    times = []
    for i in range(n):
        t = time.perf_counter()
        with open(f"{probe}/{i}.jpg", "xb") as f:
            f.write(b"x" * 12_000)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def kernel_ms(frames: list[bytes], n: int) -> float:
    """Median ms per frame of the thumbnail kernel alone, with the service's default settings."""
    s = Settings.from_env({})
    times = []
    for i in range(n):
        t = time.perf_counter()
        make_thumbnails(frames[i % len(frames)], s.thumbnail_widths, s.thumbnail_format, quality=s.thumbnail_quality)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def start_server(ice: FakeIce, oss: FakeOss, data_dir: str, workers: int,
                 pool: str = "thread") -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "RECEIVER_DATA_DIR": data_dir, "RECEIVER_ICE_ENDPOINT": ice.url,
           "ALIBABA_CLOUD_ACCESS_KEY_ID": AK, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SK,
           "RECEIVER_OSS_ENDPOINT_MAP": f"{OSS_ENDPOINT}={oss.url}", "RECEIVER_WORKERS": str(workers),
           "RECEIVER_RECONCILE_SECONDS": "0", "RECEIVER_LOG_LEVEL": "WARNING", "RECEIVER_WORKER_POOL": pool}
    with open(Path(data_dir) / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "receiver", "serve", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_healthy(port, proc)
    return proc, port


def post_all(port: int, bodies: list[bytes]) -> None:
    def send(chunk: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for body in chunk:
            conn.request("POST", "/callbacks/live-snapshot", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"callback answered {resp.status}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, [bodies[i::8] for i in range(8)]))


def seed(ice: FakeIce, oss: FakeOss, frames: list[bytes], n: int, job: str) -> list[bytes]:
    """Put n frames into the fakes for a new job; the callback bodies that announce them."""
    ice.add_job(job, bucket=BUCKET, endpoint=OSS_ENDPOINT)
    bodies = []
    # CreateTimestamp close to the objects' Last-Modified, as ICE sends it: a time far from it is refused as
    # a hint and logged per frame, which is not the path being measured. Keys stay unique 1 ms apart.
    ms0 = int(time.time() * 1000)
    for i in range(n):
        ms = ms0 + i
        key = f"snapshot/{job}/{ms}.jpg"
        oss.put(BUCKET, key, frames[i % len(frames)])
        ice.add_file(job, key, ms)
        bodies.append(callback(job, key, ms))
    return bodies


def wait_indexed(db: sqlite3.Connection, job: str, n: int, deadline: float, poll: float = 0.02) -> tuple[int, int]:
    """Poll the database until n of the job's frames are indexed (or failed); (indexed, failed)."""
    while True:
        [(indexed,)] = db.execute("SELECT count(*) FROM snapshots WHERE job_id = ?", (job,)).fetchall()
        [(failed,)] = db.execute("SELECT count(*) FROM events WHERE job_id = ? AND status IN "
                                 "('failed', 'rejected')", (job,)).fetchall()
        if indexed + failed >= n or time.perf_counter() > deadline:
            return indexed, failed
        time.sleep(poll)


def end_to_end(ice: FakeIce, oss: FakeOss, frames: list[bytes], n: int, workers: int, tag: str,
               scratch: str, pool: str = "thread") -> dict[str, float]:
    job = f"bench-pipe-{tag}"
    bodies = seed(ice, oss, frames, n, job)
    # Removed after the last round, not after each: thousands of deletes (with the disk's discards) would
    # otherwise still be in the file system's journal while the next round creates its files.
    d = tempfile.mkdtemp(prefix="receiver-bench-", dir=scratch)
    # Start each round with nothing of the last one still waiting to be written back.
    os.sync()
    proc, port = start_server(ice, oss, d, workers, pool)
    if pool == "process":
        time.sleep(3)  # spawned workers import the package before they take work; not part of the rate
    try:
        db = sqlite3.connect(f"{d}/receiver.db", timeout=30)
        # The first event after start pays one-off costs (the ICE client's first session, statement
        # compilation, lazy imports): timed on its own (polled every 1 ms), then WARM_UP events before the rate
        # is timed (--direct discards its first 20 for the same reason).
        warm_job = f"{job}-warm"
        warm = seed(ice, oss, frames, WARM_UP, warm_job)
        t0 = time.perf_counter()
        post_all(port, warm[:1])
        first = wait_indexed(db, warm_job, 1, t0 + 60, poll=0.001)
        first_ms = (time.perf_counter() - t0) * 1000
        post_all(port, warm[1:])
        everything = wait_indexed(db, warm_job, WARM_UP, time.perf_counter() + 60)
        if (first, everything) != ((1, 0), (WARM_UP, 0)):
            raise SystemExit(f"warm-up (indexed, failed): first event {first}, all {everything}; see the server log")
        server_cpu0, own_cpu0 = tree_cpu(proc.pid), own_cpu()
        t0 = time.perf_counter()
        post_all(port, bodies)
        posted = time.perf_counter() - t0
        indexed, failed = wait_indexed(db, job, n, t0 + 60 + n)
        wall = time.perf_counter() - t0
        server_cpu, fakes_cpu = tree_cpu(proc.pid) - server_cpu0, own_cpu() - own_cpu0
        db.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if indexed != n:
        raise SystemExit(f"{indexed} of {n} indexed, {failed} failed (see the server log)")
    return {"rate": n / wall, "posted_s": posted, "wall_s": wall, "server_ms": server_cpu / n * 1000,
            "fakes_ms": fakes_cpu / n * 1000, "first_ms": first_ms}


def direct_child(ice_url: str, oss_url: str, bodies: list[bytes], data_dir: str, frames: list[bytes],
                 out: Any) -> None:
    """--direct, in a spawned process: process_event in a loop (no HTTP, no dispatcher), then the kernel on
    the same frames in the same process."""
    from receiver.app import build_services
    from receiver.db.migrate import ensure_schema
    from receiver.intake.parse import parse_callback
    from receiver.worker.pipeline import process_event

    s = Settings.from_env({"RECEIVER_DATA_DIR": data_dir, "RECEIVER_ICE_ENDPOINT": ice_url,
                           "ALIBABA_CLOUD_ACCESS_KEY_ID": AK, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SK,
                           "RECEIVER_OSS_ENDPOINT_MAP": f"{OSS_ENDPOINT}={oss_url}", "RECEIVER_RECONCILE_SECONDS": "0"})
    svc = build_services(s)
    svc.dispatcher = None  # never started: this loop is the only worker
    ensure_schema(svc.engine)
    ids = svc.intake.record([item for body in bodies for item in parse_callback(body)[0]]).new_ids
    warm = min(20, len(ids) // 5)
    for i in ids[:warm]:
        process_event(svc, i)
    wall, cpu = time.perf_counter(), time.thread_time()
    statuses = [process_event(svc, i).status for i in ids[warm:]]
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    svc.close()
    n = len(ids) - warm
    out.put({"ms": wall / n * 1000, "cpu_ms": cpu / n * 1000, "kernel_ms": kernel_ms(frames, max(40, n // 4)),
             "done": statuses.count("done"), "n": n})


def direct(ice: FakeIce, oss: FakeOss, frames: list[bytes], n: int, tag: str, scratch: str) -> dict[str, float]:
    job = f"bench-direct-{tag}"
    bodies = seed(ice, oss, frames, n, job)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    os.sync()
    child = ctx.Process(target=direct_child, args=(ice.url, oss.url, bodies,
                                                   tempfile.mkdtemp(prefix="direct-", dir=scratch), frames, out))
    child.start()
    result: dict[str, float] = out.get(timeout=120 + n)
    child.join(30)
    if result["done"] != result["n"]:
        raise SystemExit(f"--direct: {result['done']} of {result['n']} events done")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--kind", default="photo", choices=["smooth", "photo", "noisy"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pool", default="thread", choices=["thread", "process"], help="RECEIVER_WORKER_POOL")
    ap.add_argument("--scratch", default=None,
                    help="folder for the service's data (database, thumbnails); default: the system's temp folder. "
                         "On a file system without a journal, creating files costs far more for minutes after "
                         "many deletes (ext4's recently_deleted inode check); /dev/shm (tmpfs) takes the disk out")
    ap.add_argument("--direct", action="store_true",
                    help="also run process_event in a loop in one process (no HTTP, no dispatcher), with the "
                         "kernel timed in that process: the pipeline's own overhead, without the server's")
    a = ap.parse_args()
    worker_counts = [int(w) for w in a.workers.split(",")]
    frames = [make_frame(seed=i, kind=a.kind) for i in range(DISTINCT)]
    kernel_runs = max(40, a.frames // 4)
    kernel = [kernel_ms(frames, kernel_runs)]
    results: dict[int, list[dict[str, float]]] = {w: [] for w in worker_counts}
    directs: list[dict[str, float]] = []
    with (FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss,
          tempfile.TemporaryDirectory(prefix="receiver-bench-", dir=a.scratch) as scratch):
        oss.create_bucket(BUCKET)
        creates = [create_us(scratch)]
        for r in range(a.rounds):
            for w in worker_counts:
                results[w].append(end_to_end(ice, oss, frames, a.frames, w, f"{w}w-{r}", scratch, a.pool))
                kernel.append(kernel_ms(frames, kernel_runs))
            if a.direct:
                directs.append(direct(ice, oss, frames, a.frames, str(r), scratch))
        creates.append(create_us(scratch))
    k_ms = statistics.median(kernel)
    k_rate = 1000 / k_ms
    print(f"machine: {os.cpu_count()} cores; worker pool: {a.pool}; {a.frames} x 1920x1080 {a.kind} JPEG "
          f"({statistics.mean(len(f) for f in frames) / 1000:.0f} KB avg), widths (320, 160) JPEG q80; "
          f"data under {a.scratch or tempfile.gettempdir()}")
    print(f"bare kernel (make_thumbnails, 1 thread): {k_ms:.2f} ms/frame = {k_rate:.0f} frames/s "
          f"(median of {len(kernel)} interleaved measurements: {', '.join(f'{k:.2f}' for k in kernel)} ms)")
    print(f"creating a file in the data folder (two per frame): {creates[0]:.0f} us before the runs, "
          f"{creates[1]:.0f} us after (a quiet ext4 20-30 us, tmpfs ~12; far more for minutes after many deletes "
          "on ext4 without a journal)")
    print("server ms: server process CPU per frame; fakes ms: this process (fake ICE + OSS, poller) per frame")
    print(f"{'workers':>7} {'frames/s':>9} {'per worker':>10} {'x kernel':>9} {'x 1 worker':>10} "
          f"{'post s':>7} {'server ms':>9} {'fakes ms':>8}")
    one = statistics.median(r["rate"] for r in results[worker_counts[0]])
    for w in worker_counts:
        m = {k: statistics.median(r[k] for r in results[w]) for k in results[w][0]}
        print(f"{w:7d} {m['rate']:9.1f} {m['rate'] / w:10.1f} {m['rate'] / w / k_rate:9.2f} {m['rate'] / one:10.2f} "
              f"{m['posted_s']:7.2f} {m['server_ms']:9.2f} {m['fakes_ms']:8.2f}")
    # This machine's speed drifts between runs (a shared VM): show the spread, not just the medians.
    for w in worker_counts:
        print(f"x kernel per worker, {w} worker(s), per round: "
              + ", ".join(f"{r['rate'] / w / k_rate:.2f}" for r in results[w]))
    firsts = [r["first_ms"] for w in worker_counts for r in results[w]]
    print(f"first event after start, callback posted to snapshot indexed (not in the rates): median "
          f"{statistics.median(firsts):.0f} ms ({', '.join(f'{x:.0f}' for x in firsts)})")
    if directs:
        ratios = [d["kernel_ms"] / d["ms"] for d in directs]
        print(f"direct (process_event in a loop, one process, kernel timed there): x kernel "
              f"{statistics.median(ratios):.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)}); "
              + "; ".join(f"{d['ms']:.2f} ms/frame wall, {d['cpu_ms']:.2f} ms CPU, kernel {d['kernel_ms']:.2f} ms"
                          for d in directs))


if __name__ == "__main__":
    main()
