"""The scale-out shape on this machine: real PostgreSQL + Redis, gunicorn and Celery worker subprocesses.

    .venv/bin/python bench/scale.py [--snapshots 300] [--shapes 1xsolo,1xthreads3,2xthreads3] [--rounds 2]
                                    [--seconds 3] [--cache-seconds 2] [--cache-run 12] [--skip ...]
                                    [--profile FOLDER [--profile-cpu]] [--env NAME=VALUE]

Reports, in one run, each figure against a baseline measured in the same run:

1. snapshots/s end to end per Celery worker process (callback in -> 1080p JPEG fetched from OSS -> 320 + 160 px
   thumbnails written to the OSS thumbnail store -> indexed on PostgreSQL) for each worker shape: N
   `receiver worker --pool solo` processes, or N `--pool threads` processes with RECEIVER_WORKERS threads each.
   Each run is a ratio of the bare kernel (bench/pipeline.py's `kernel_ms`: make_thumbnails with the service's
   default widths on the same frames, one thread, no I/O) timed in this process just before and after it.
   Also: the worker processes' CPU per snapshot, the whole machine's (/proc/stat) split into the workers, this
   process (the fakes and the load client) and the rest (PostgreSQL, Redis, gunicorn), and broker deliveries per
   snapshot (kombu's unacked-index ZADDs).
2. callbacks/s accepted by gunicorn (gunicorn.conf.py: 2 workers x 8 threads) on PostgreSQL with Celery
   publishing (record + publish, no worker running), as a ratio of `GET /healthz` on the same server, closed
   loop, 16 keep-alive client connections, interleaved rounds (healthz, callbacks, healthz, ...), with the
   machine's CPU per request by process.
3. GetLiveSnapshotJob calls per job per cache period with 4 worker processes (RECEIVER_JOB_CACHE_SECONDS
   = --cache-seconds), counted from the fake ICE's request log while events of 8 jobs keep arriving for
   --cache-run seconds. 1.0 means one call per job per period for the whole deployment.

The kernel's spread within the run is printed, and flagged above KERNEL_DRIFT_FLAG: a VM whose speed drifts
while the run lasts gives ratios that spread widely.

Start-up is outside every timed window: servers and workers start, then warm-up events are processed (every
worker thread has run at least one), then the clock starts. --profile FOLDER records the first shape's worker
process (first round) and gunicorn's workers during the callback rounds with py-spy (idle included, unless
--profile-cpu; on this VM py-spy cannot tell idle threads apart, so both count waits) and prints where the
worker's time went. Fake ICE and fake OSS run in this process. Needs the postgresql and redis-server packages
(.ci/run installs them) and `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pipeline import DISTINCT, cpu_seconds, kernel_ms  # noqa: E402
from receiver.sim.fake_ice import FakeIce  # noqa: E402
from receiver.sim.fake_oss import FakeOss  # noqa: E402
from receiver.sim.frames import make_frame  # noqa: E402
from tests.support.cluster import AK, BUCKET, SK, Cluster, callback  # noqa: E402
from tests.support.pg_redis import PgServer, RedisServer, pg_bindir  # noqa: E402

WARM_UP = 8  # events per worker process before the clock starts
WIDTHS = "320,160"  # the service's default widths, as the kernel uses
PROFILE_IDLE = ["--idle"]  # --profile-cpu: on-CPU samples only
EXTRA_ENV: dict[str, str] = {}  # --env NAME=VALUE: for every service process
# Above this spread of the kernel's timings within one run ((max - min) / median), the run is flagged: this VM's
# speed changes by the minute, and such runs' ratios spread widely for one tree (bench/RESULTS.md).
KERNEL_DRIFT_FLAG = 0.10


def new_cluster(pg: PgServer, redis: RedisServer, ice: FakeIce, oss: FakeOss, **env: str) -> Cluster:
    db = pg.create_database(template=pg.migrated_template())
    redis_flush(redis)
    return Cluster(pg.url(db), redis.url, ice, oss, Path(tempfile.mkdtemp(prefix="receiver-bench-")),
                   web_workers=2, extra_env={"RECEIVER_THUMBNAIL_WIDTHS": WIDTHS, **EXTRA_ENV, **env})


def redis_flush(redis: RedisServer) -> None:
    import redis as redis_client

    r = redis_client.Redis.from_url(redis.url)
    r.flushdb()
    r.config_resetstat()
    r.close()


def redis_deliveries(redis: RedisServer) -> int:
    """Messages handed to workers so far: kombu's Redis QoS records each delivered message in its unacked
    index with one ZADD (publishers may push a burst with one LPUSH, so LPUSHes no longer count messages)."""
    import redis as redis_client

    r = redis_client.Redis.from_url(redis.url)
    try:
        return int(r.info("commandstats").get("cmdstat_zadd", {}).get("calls", 0))
    finally:
        r.close()


def parse_shape(text: str) -> tuple[int, str, int]:
    """"1xsolo" -> (1 process, solo, 1 slot); "2xthreads3" -> (2 processes, threads pool, 3 threads each)."""
    procs, _, pool = text.partition("x")
    threads = pool.removeprefix("threads")
    if pool == "solo":
        return int(procs), "solo", 1
    if pool.startswith("threads") and threads.isdigit():
        return int(procs), "threads", int(threads)
    raise SystemExit(f"--shapes: {text!r} is not <processes>xsolo or <processes>xthreads<N>")


def seed(ice: FakeIce, oss: FakeOss, job: str, frames: list[bytes], n: int, t0: int = 1796212805000) -> list[bytes]:
    ice.add_job(job, bucket=BUCKET)
    bodies = []
    for i in range(n):
        ms = t0 + i * 1000
        key = f"snapshot/{job}/{ms}.jpg"
        # Written when captured, as ICE does: a callback time far from Last-Modified is logged as a warning
        # per event, a cost production does not pay.
        oss.put(BUCKET, key, frames[i % len(frames)], last_modified=ms / 1000)
        ice.add_file(job, key, ms)
        bodies.append(callback(job, key, ms))
    return bodies


def cpu_by_command() -> Counter[str]:
    """CPU seconds so far of every process, by command (postgres, redis-server, gunicorn, python...)."""
    out: Counter[str] = Counter()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
            f = rest.split()
            cmd = head.split("(", 1)[1]
            out[cmd] += (int(f[11]) + int(f[12])) / __import__("os").sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            continue
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (user + nice + system + irq + softirq + steal)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / __import__("os").sysconf("SC_CLK_TCK")


def worker_pids(c: Cluster) -> list[int]:
    """The Celery worker processes (`receiver worker --pool solo` runs tasks in the process itself)."""
    return [p.pid for p in c.workers]


def snapshots_per_second(pg: PgServer, redis: RedisServer, ice: FakeIce, oss: FakeOss, frames: list[bytes],
                         shape: tuple[int, str, int], n: int, tag: str, profile: Path | None) -> dict[str, float]:
    workers, pool, threads = shape
    job = f"bench-snap-{tag}"
    bodies = seed(ice, oss, job, frames, n)
    c = new_cluster(pg, redis, ice, oss)
    try:
        c.start_web()
        for _ in range(workers):
            c.start_worker(pool, RECEIVER_WORKERS=str(threads))
        # Warm-up (not timed): every worker process connected, its statements prepared, the job cached.
        warm_job = f"{job}-warm"
        warm = seed(ice, oss, warm_job, frames, WARM_UP * workers * threads)
        c.post(warm, threads=4)
        counts = c.wait_done(warm_job, len(warm), 120)
        assert counts.get("done") == len(warm), (counts, c.logs())
        time.sleep(0.5)
        pids = worker_pids(c)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        own0, busy0 = time.process_time(), machine_busy_seconds()
        pushes0 = redis_deliveries(redis)
        spy = None
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", *PROFILE_IDLE,
                                    "--rate", "100", "--format", "raw", "--output", str(profile / f"worker-{tag}.txt"),
                                    "--pid", str(pids[0]), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        t = time.perf_counter()
        c.post(bodies, threads=8)
        counts = c.wait_done(job, n, 600)
        elapsed = time.perf_counter() - t
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        own, busy = time.process_time() - own0, machine_busy_seconds() - busy0
        if spy is not None:
            spy.send_signal(2)  # SIGINT: py-spy writes what it recorded
            spy.wait(timeout=60)
        messages = redis_deliveries(redis) - pushes0
        assert counts.get("done") == n and counts["snapshots"] == n, (counts, c.logs())
        return {"rate": n / elapsed, "cpu_ms": cpu / n * 1000, "messages": messages / n,
                "machine_ms": busy / n * 1000, "bench_ms": own / n * 1000}
    finally:
        c.stop()


class Loader:
    """A closed loop of keep-alive connections sending one kind of request for a while."""

    def __init__(self, port: int, threads: int) -> None:
        self.port, self.threads = port, threads
        self.cpu: list[tuple[str, float, float, float]] = []
        self.by: list[tuple[str, dict[str, float]]] = []  # (what, server-side ms/request, client ms, cores busy)

    def run(self, seconds: float, request: tuple[str, str] | None, bodies: list[bytes] | None = None) -> float:
        """Requests/s over ``seconds``: GET ``request`` path, or POST each of ``bodies`` (each once)."""
        done = Counter[int]()
        lock = threading.Lock()
        it = iter(bodies or [])
        stop = time.perf_counter() + seconds

        def loop(slot: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            n = 0
            while time.perf_counter() < stop:
                if request is not None:
                    conn.request(*request)
                else:
                    with lock:
                        body = next(it, None)
                    if body is None:
                        break
                    conn.request("POST", "/callbacks/live-snapshot", body=body,
                                 headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise SystemExit(f"answered {resp.status}")
                n += 1
            conn.close()
            done[slot] = n

        t, busy, own, by0 = time.perf_counter(), machine_busy_seconds(), time.process_time(), cpu_by_command()
        ts = [threading.Thread(target=loop, args=(i,)) for i in range(self.threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        n = sum(done.values())
        busy, own = machine_busy_seconds() - busy, time.process_time() - own
        by = cpu_by_command()
        by.subtract(by0)
        what = request[1] if request else "callbacks"
        self.by.append((what, {k: v / max(1, n) * 1000 for k, v in by.most_common(6) if v > 0}))
        self.cpu.append((what, (busy - own) / max(1, n) * 1000, own / max(1, n) * 1000,
                         busy / (time.perf_counter() - t)))
        return n / (time.perf_counter() - t)


def child_pids(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return out


def callbacks_vs_healthz(pg: PgServer, redis: RedisServer, ice: FakeIce, oss: FakeOss, rounds: int,
                         seconds: float, profile: Path | None = None) -> tuple[list[float], list[float]]:
    job = "bench-cb"
    ice.add_job(job, bucket=BUCKET)
    # Bodies only: intake records without asking ICE or OSS. More than a round can send.
    bodies = [callback(job, f"snapshot/{job}/{1796212805000 + i}.jpg", 1796212805000 + i) for i in range(200_000)]
    c = new_cluster(pg, redis, ice, oss)
    loader = Loader(c.port, 16)
    try:
        c.start_web()
        loader.run(1.0, ("GET", "/healthz"))  # warm-up: connections, imports, the broker connection
        loader.run(1.0, None, bodies[:500])
        del bodies[:500]
        healthz, cbs = [], []
        spies = []
        if profile is not None:
            assert c.web is not None
            profile.mkdir(parents=True, exist_ok=True)
            for i, pid in enumerate(child_pids(c.web.pid)):
                spies.append(subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", *PROFILE_IDLE, "--rate", "200",
                     "--format", "raw", "--output", str(profile / f"web{i}-callbacks.txt"), "--pid", str(pid),
                     "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)
        for _ in range(rounds):
            healthz.append(loader.run(seconds, ("GET", "/healthz")))
            before = len(bodies)
            rate = loader.run(seconds, None, bodies)
            cbs.append(rate)
            del bodies[:before]  # each body once: the rest are dropped (a round never sends them all)
            bodies = [callback(job, f"snapshot/{job}/x{len(cbs)}-{i}.jpg", 1796212805000 + i) for i in range(200_000)]
        for what, server_ms, client_ms, cores in loader.cpu[2:]:
            print(f"  {what}: machine CPU per request {server_ms:.3f} ms besides the client's {client_ms:.3f} ms; "
                  f"{cores:.2f} cores busy")
        for what, by in loader.by[2:]:
            print(f"  {what}: ms per request by command: " + ", ".join(f"{k} {v:.3f}" for k, v in by.items()))
        for spy in spies:
            spy.send_signal(2)
            spy.wait(timeout=60)
        return healthz, cbs
    finally:
        c.stop()


def ice_calls_per_period(pg: PgServer, redis: RedisServer, ice: FakeIce, oss: FakeOss, workers: int,
                         cache_seconds: float, run_seconds: float, jobs: int = 8) -> dict[str, float]:
    """GetLiveSnapshotJob calls per job per cache period while every job keeps sending events to every worker."""
    frame = make_frame(seed=5, width=320, height=180)
    rate_per_job = 10  # events/s per job: every worker sees every job several times per period
    per_job = int(run_seconds * rate_per_job)
    names = [f"bench-cache-{i}" for i in range(jobs)]
    bodies = {j: seed(ice, oss, j, [frame], per_job + WARM_UP, t0=1796300000000) for j in names}
    c = new_cluster(pg, redis, ice, oss, RECEIVER_JOB_CACHE_SECONDS=str(cache_seconds))
    try:
        c.start_web()
        for _ in range(workers):
            c.start_worker("solo")
        warm_job = "bench-cache-warm"
        warm = seed(ice, oss, warm_job, [frame], WARM_UP * workers, t0=1796300000000)
        c.post(warm, threads=4)
        c.wait_done(warm_job, len(warm), 120)
        # Let every cache entry the warm-up made expire, so the window starts cold for the measured jobs.
        time.sleep(cache_seconds + 0.5)
        t_start = time.time()
        ticks = int(run_seconds * 10)
        for k in range(ticks):
            due = t_start + k / 10
            time.sleep(max(0.0, due - time.time()))
            batch = [bodies[j][k] for j in names if k < per_job]
            c.post(batch, threads=len(batch))
        for j in names:
            c.wait_done(j, per_job, 120)
        t_end = time.time()
        calls = [r for r in ice.requests if r["action"] == "GetLiveSnapshotJob"
                 and r["params"].get("JobId") in names and t_start - 0.5 <= r["time"] <= t_end]
        periods = max(1.0, (t_end - t_start) / cache_seconds)
        per_job_calls = Counter(r["params"]["JobId"] for r in calls)
        return {"calls": len(calls), "periods": periods, "jobs": jobs,
                "per_job_period": len(calls) / jobs / periods, "max_job": max(per_job_calls.values(), default=0)}
    finally:
        c.stop()


# --- where a worker's time went (py-spy raw stacks) ----------------------------------------------------------

CATEGORIES = [  # first match wins, on the whole stack (outermost first) joined by ';'
    ("image work (decode, resize, encode, signals)", ("make_thumbnails", "snapshot_columns")),
    ("PostgreSQL: pool pre-ping", ("do_ping",)),
    ("OSS (fetch, thumbnail put)", ("oss_transport.py", "oss_source.py", "thumbstore.py", "oss2/")),
    ("ICE (GetLiveSnapshotJob, SDK)", ("receiver/adapters/ice.py", "alibabacloud", "darabonba")),
    ("job cache (shared tier)", ("job_cache",)),
    ("PostgreSQL: psycopg (round trips)", ("psycopg/", "psycopg_binary")),
    ("SQLAlchemy (Python)", ("sqlalchemy/",)),
    ("idle between messages (broker wait)", ("_epoll.poll", "poll (kombu/utils/eventio.py")),
    ("Celery/kombu/Redis (message handling)", ("kombu/", "celery/", "redis/", "billiard/", "vine/")),
]


def profile_summary(path: Path, all_threads: bool = False) -> list[tuple[str, float]]:
    """Shares of the samples of the process's main thread (the solo pool runs tasks there), or of every thread
    (--profile-gil: the GIL holder's, whichever thread it is)."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or not (all_threads or stack.startswith("_run_module_as_main")):
            continue  # other threads (heartbeat, sweeper, publisher) mostly sleep
        cat = next((name for name, marks in CATEGORIES if any(m in stack for m in marks)), "other (worker code, GC)")
        counts[cat] += int(n)
    total = sum(counts.values()) or 1
    return [(k, v / total * 100) for k, v in counts.most_common()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshots", type=int, default=300)
    ap.add_argument("--shapes", default="1xsolo,1xthreads3,2xthreads3",
                    help="worker shapes for the end-to-end figure, run in turn each round: <processes>xsolo or "
                         "<processes>xthreads<N> (`receiver worker --pool threads`, RECEIVER_WORKERS=N)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each figure (interleaved with its baseline)")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each callbacks and /healthz round")
    ap.add_argument("--cache-seconds", type=float, default=2.0)
    ap.add_argument("--cache-run", type=float, default=12.0)
    ap.add_argument("--cache-workers", type=int, default=4)
    ap.add_argument("--skip", default="", help="comma-separated: snapshots,callbacks,cache")
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy the first shape's first worker process (first round) and gunicorn's workers "
                         "during the callback rounds into FOLDER")
    ap.add_argument("--profile-cpu", action="store_true", help="with --profile: on-CPU samples only (no --idle)")
    ap.add_argument("--profile-gil", action="store_true",
                    help="with --profile: only the thread holding the GIL, all threads (where a threads pool's "
                         "GIL-bound time goes)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting for every service process (e.g. RECEIVER_REDISPATCH_SECONDS=120)")
    a = ap.parse_args()
    EXTRA_ENV.update(kv.split("=", 1) for kv in a.env)
    if a.profile_cpu:
        PROFILE_IDLE.clear()
    if a.profile_gil:
        PROFILE_IDLE[:] = ["--gil"]
    skip = set(filter(None, a.skip.split(",")))
    bindir = pg_bindir()
    redis_bin = shutil.which("redis-server")
    if bindir is None or redis_bin is None:
        sys.exit("PostgreSQL or redis-server not found (apt-get install postgresql redis-server)")
    shapes = [parse_shape(x) for x in a.shapes.split(",")]
    frames = [make_frame(seed=i, kind="photo") for i in range(DISTINCT)]
    kernel_n = 60
    kernel = [kernel_ms(frames, kernel_n)]
    snaps: dict[tuple[int, str, int], list[dict[str, float]]] = {sh: [] for sh in shapes}
    healthz: list[float] = []
    cbs: list[float] = []
    cache: dict[str, float] | None = None
    pg, redis = PgServer(bindir).start(), RedisServer(redis_bin).start()
    try:
        with FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss:
            if "snapshots" not in skip:
                for r in range(a.rounds):
                    for i, sh in enumerate(shapes):
                        prof = a.profile if (a.profile is not None and i == 0 and r == 0) else None
                        before = kernel[-1]
                        run = snapshots_per_second(pg, redis, ice, oss, frames, sh, a.snapshots, f"{i}s{r}", prof)
                        kernel.append(kernel_ms(frames, kernel_n))
                        # Against the kernel timed just before and just after the run: this VM's speed drifts.
                        run["kernel_ms"] = (before + kernel[-1]) / 2
                        snaps[sh].append(run)
            if "callbacks" not in skip:
                healthz, cbs = callbacks_vs_healthz(pg, redis, ice, oss, a.rounds + 1, a.seconds, a.profile)
            if "cache" not in skip:
                cache = ice_calls_per_period(pg, redis, ice, oss, a.cache_workers, a.cache_seconds, a.cache_run)
    finally:
        redis.stop()
        pg.stop()
    k_ms = statistics.median(kernel)
    print(f"machine: {__import__('os').cpu_count()} cores; 1920x1080 photo JPEGs ({DISTINCT} distinct, "
          f"{statistics.mean(len(f) for f in frames) / 1000:.0f} KB avg), widths {WIDTHS}")
    print(f"bare kernel (bench/pipeline.py kernel_ms: make_thumbnails, 1 thread): {k_ms:.2f} ms/frame = "
          f"{1000 / k_ms:.1f} frames/s (median of {len(kernel)}: {', '.join(f'{k:.2f}' for k in kernel)})")
    drift = (max(kernel) - min(kernel)) / k_ms
    print(f"  the kernel's spread within this run: {drift:.0%}" + (
        f" (over {KERNEL_DRIFT_FLAG:.0%}: the machine's speed drifted, so the ratios below are less reliable)"
        if drift > KERNEL_DRIFT_FLAG else ""))
    if snaps[shapes[0]]:
        print(f"snapshots end to end ({a.snapshots} callbacks per run, gunicorn 2x8 + PostgreSQL + Redis + "
              "`receiver worker` processes, thumbnails to the fake OSS; x kernel per process, each round against "
              "the kernel timed around it):")
        for sh in shapes:
            w, pool, threads = sh
            runs = snaps[sh]
            ratios = [r["rate"] / w * r["kernel_ms"] / 1000 for r in runs]
            cpu = statistics.median(r["cpu_ms"] for r in runs)
            machine = statistics.median(r["machine_ms"] for r in runs)
            bench = statistics.median(r["bench_ms"] for r in runs)
            k_run = statistics.median(r["kernel_ms"] for r in runs)
            name = f"{w} x --pool {pool}" + (f" ({threads} threads)" if pool == "threads" else "")
            rounds = ", ".join(f"{x:.2f}" for x in ratios)
            print(f"  {name}: {statistics.median(r['rate'] for r in runs):6.1f} snapshots/s = "
                  f"{statistics.median(ratios):.2f}x kernel per process (rounds: {rounds}); "
                  f"worker CPU {cpu:.2f} ms/snapshot = {k_run / cpu:.2f}x the kernel's; "
                  f"{statistics.median(r['messages'] for r in runs):.2f} broker deliveries/snapshot")
            print(f"      CPU per snapshot, all cores: {machine:.2f} ms (worker processes {cpu:.2f}, this process's "
                  f"fakes and clients {bench:.2f}, the rest (PostgreSQL, Redis, gunicorn) {machine - cpu - bench:.2f})")
    if cbs:
        ratios = [c / h for c, h in zip(cbs, healthz, strict=False)]
        print("callbacks on gunicorn (2 workers x 8 threads) + PostgreSQL, 16 keep-alive connections, "
              f"{a.seconds:.0f} s rounds:")
        print(f"  GET /healthz {statistics.median(healthz):7.0f}/s; callbacks {statistics.median(cbs):7.0f}/s = "
              f"{statistics.median(ratios):.2f}x healthz (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")
    if cache is not None:
        print(f"GetLiveSnapshotJob with {a.cache_workers} worker processes, {cache['jobs']:.0f} jobs x 10 events/s, "
              f"RECEIVER_JOB_CACHE_SECONDS={a.cache_seconds:g}, {cache['periods']:.1f} periods: {cache['calls']:.0f} "
              f"calls = {cache['per_job_period']:.2f} per job per period (most for one job: {cache['max_job']:.0f})")
    if a.profile is not None:
        for p in sorted(a.profile.glob("worker-*.txt")):
            mode = " ".join(PROFILE_IDLE) or "on-CPU"
            print(f"where the worker process's time went ({p}, py-spy {mode}):")
            for name, pct in profile_summary(p, all_threads=a.profile_gil):
                print(f"  {pct:5.1f} %  {name}")


if __name__ == "__main__":
    main()
