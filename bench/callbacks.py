"""Callback intake under load: accepted callbacks/s and answer-time percentiles, next to a trivial endpoint.

Run on demand:  .venv/bin/python bench/callbacks.py [--seconds 4] [--rounds 3] [--concurrency 16] [--rate 1000]

The service runs as `receiver serve` would (waitress, SQLite WAL, workers off so the figure is intake alone,
or --with-workers) in a subprocess; the load generator runs in other processes on loopback. Each phase is
bounded in count and time. Closed loop measures capacity; the open-loop phase sends at a fixed --rate and
measures latency from each request's scheduled time, so a stall is not hidden (coordinated omission).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pg_redis import free_port, wait_healthy  # noqa: E402


def start_server(port: int, data_dir: str, with_workers: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RECEIVER_DATA_DIR": data_dir, "RECEIVER_LOG_LEVEL": "WARNING",
           "RECEIVER_RECONCILE_SECONDS": "0", "RECEIVER_ICE_ENDPOINT": "http://127.0.0.1:9",
           "ALIBABA_CLOUD_ACCESS_KEY_ID": "x", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "y"}
    cmd = [sys.executable, "-m", "receiver", "serve", "--port", str(port)]
    if not with_workers:
        env["RECEIVER_WORKERS"] = "0"  # intake alone: events stay pending in the inbox
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_healthy(port, proc)
    return proc


def _body(worker: int, i: int) -> bytes:
    ms = 1796212805123 + worker * 10_000_000 + i
    return json.dumps({"EventType": "LiveSnapshotComplete", "EventTime": "2026-11-28T12:00:00Z",
                       "MessageBody": {"JobId": f"bench-job-{worker % 50}", "OssObject":
                                       f"snapshot/bench-job-{worker % 50}/{ms}.jpg", "CreateTimestamp": ms}}).encode()


def _client(args: tuple[int, str, int, float, float, int, int, mp.Queue]) -> None:  # type: ignore[type-arg]
    port, path, wid, seconds, interval, max_requests, offset, out = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    lat: list[float] = []
    errors = 0
    start = time.perf_counter()
    i = 0
    while i < max_requests and time.perf_counter() - start < seconds:
        scheduled = start + i * interval if interval else time.perf_counter()
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if path == "/healthz":
            conn.request("GET", path)
        else:
            conn.request("POST", path, body=_body(offset + wid, i), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            errors += 1
        lat.append(time.perf_counter() - scheduled)
        i += 1
    out.put((lat, errors, time.perf_counter() - start))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to report the server's cost per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_phase(port: int, path: str, conns: int, seconds: float, rate: float | None, offset: int,
              server_pid: int | None = None) -> dict[str, float]:
    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    interval = conns / rate if rate else 0.0
    max_requests = int(seconds * rate / conns) + 1 if rate else 10**9
    procs = []
    # Two generator processes (threads would share one GIL with each other, not with the server).
    per_proc = [conns // 2 + conns % 2, conns // 2]
    wid = 0
    for n in per_proc:
        for _ in range(n):
            p = mp.Process(target=_client, args=((port, path, wid, seconds, interval, max_requests, offset, out),))
            p.start()
            procs.append(p)
            wid += 1
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    wall = max(r[2] for r in results)
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [lat[-1]] * 99
    cpu = cpu_seconds(server_pid) - cpu0 if server_pid else 0.0
    return {"n": len(lat), "rps": len(lat) / wall, "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": q[98] * 1000, "errors": errors, "cpu_us": cpu / len(lat) * 1e6, "cpu_util": cpu / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4, help="length of each closed-loop phase")
    ap.add_argument("--rounds", type=int, default=3, help="healthz/callback pairs, interleaved; medians reported")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rate", type=float, default=1000, help="open-loop callbacks/s for the latency phase")
    ap.add_argument("--with-workers", action="store_true")
    a = ap.parse_args()
    base: list[dict[str, float]] = []
    cb: list[dict[str, float]] = []
    open_loop: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        proc = start_server(port, d, a.with_workers)
        try:
            run_phase(port, "/healthz", 4, 1, None, 0)  # warm-up
            run_phase(port, "/callbacks/live-snapshot", 4, 1, None, 100)
            # A, B, A, B...: a burst of load from elsewhere on the machine hits both sides alike.
            for r in range(a.rounds):
                base.append(run_phase(port, "/healthz", a.concurrency, a.seconds, None, 0, proc.pid))
                cb.append(run_phase(port, "/callbacks/live-snapshot", a.concurrency, a.seconds, None, 1000 + 100 * r,
                                    proc.pid))
                open_loop.append(run_phase(port, "/callbacks/live-snapshot", a.concurrency, a.seconds, a.rate,
                                           5000 + 100 * r, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    workers = "on" if a.with_workers else "off (RECEIVER_WORKERS=0)"
    print(f"machine: {os.cpu_count()} cores; waitress 16 threads; SQLite WAL; workers {workers}; "
          f"{a.concurrency} connections; {a.rounds} rounds of {a.seconds:.0f} s per phase, medians")
    print("server CPU: the server process's user+system time per request, and its share of one core")
    print(f"{'phase':34} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'CPU us':>7} "
          f"{'CPU %':>6}")
    for name, rs in [("GET /healthz (closed loop)", base), ("POST callback (closed loop)", cb),
                     (f"POST callback (open loop {a.rate:.0f}/s)", open_loop)]:
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"{name:34} {m['n']:8.0f} {m['rps']:8.0f} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} "
              f"{sum(r['errors'] for r in rs):6.0f} {m['cpu_us']:7.0f} {m['cpu_util'] * 100:6.0f}")
    ratios = [c["rps"] / b["rps"] for b, c in zip(base, cb, strict=True)]
    print(f"ratio callback/healthz throughput: {statistics.median(ratios):.2f} "
          f"(per round: {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.6)")
    p99s = ", ".join(f"{r['p99_ms']:.1f}" for r in open_loop)
    print(f"open loop p99 per round: {p99s} ms (target < 50)")


if __name__ == "__main__":
    main()
