"""Callback answer time while slow clients hold connections open against `receiver serve`.

Run on demand:  .venv/bin/python bench/slow_clients.py [--connections 1000] [--samples 20] [--source DIR]

Starts `receiver serve` (workers off, as bench/callbacks.py), opens --connections connections (half idle after
connecting, half trickling a callback one byte every 0.5-1 s), then times --samples callbacks and /healthz on
fresh connections, one after another, each with a 10 s timeout (ICE waits 3 s). --source runs the server from
another checkout (e.g. `git archive HEAD | tar -x -C /tmp/orig`) to measure before and after a change.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pg_redis import free_port, stop_process, wait_healthy  # noqa: E402


def _callback(i: int) -> bytes:
    ms = 1796212805123 + i
    return json.dumps({"EventType": "LiveSnapshotComplete", "EventTime": "2026-11-28T12:00:00Z",
                       "MessageBody": {"JobId": "bench-job", "OssObject": f"snapshot/bench-job/{ms}.jpg",
                                       "CreateTimestamp": ms}}).encode()


def _request(i: int) -> bytes:
    body = _callback(i)
    return (b"POST /callbacks/live-snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def hold(port: int, count: int, stop: threading.Event) -> tuple[list[socket.socket], threading.Thread]:
    socks, trickling = [], {}
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        socks.append(s)
        if i % 2:
            trickling[s] = [_request(i), 0]

    def trickle() -> None:
        rng = random.Random(1)
        while not stop.wait(rng.uniform(0.5, 1.0)):
            for s, st in list(trickling.items()):
                if st[1] < len(st[0]) - 1:  # never the last byte
                    try:
                        s.send(st[0][st[1]:st[1] + 1])
                        st[1] += 1
                    except OSError:
                        trickling.pop(s)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    return socks, t


def timed(port: int, method: str, path: str, body: bytes | None) -> float | None:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        r = conn.getresponse()
        r.read()
        return time.perf_counter() - start if r.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def server_sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            n += os.readlink(fd).startswith("socket:")
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--source", default=str(ROOT), help="checkout to run `python -m receiver serve` from")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.connections + 500)), hard))
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        env = {**os.environ, "RECEIVER_DATA_DIR": d, "RECEIVER_LOG_LEVEL": "WARNING", "RECEIVER_WORKERS": "0",
               "RECEIVER_RECONCILE_SECONDS": "0", "RECEIVER_ICE_ENDPOINT": "http://127.0.0.1:9",
               "ALIBABA_CLOUD_ACCESS_KEY_ID": "x", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "y",
               "PYTHONPATH": a.source}
        proc = subprocess.Popen([sys.executable, "-m", "receiver", "serve", "--port", str(port)], env=env,
                                cwd=a.source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = threading.Event()
        socks: list[socket.socket] = []
        try:
            wait_healthy(port, proc)
            base = [timed(port, "POST", "/callbacks/live-snapshot", _callback(-i - 1)) for i in range(5)]
            socks, thread = hold(port, a.connections, stop)
            time.sleep(3)
            held = server_sockets(proc.pid)
            times = [timed(port, "POST", "/callbacks/live-snapshot", _callback(i)) for i in range(a.samples)]
            health = timed(port, "GET", "/healthz", None)
            ok = sorted(t for t in times if t is not None)
            print(f"source {a.source}; {a.connections} slow connections (half idle, half trickling); "
                  f"server holds {held} sockets")
            print(f"callback before opening them: median {statistics.median(t for t in base if t) * 1000:.1f} ms")
            if ok:
                print(f"callbacks answered 200: {len(ok)}/{len(times)}; median {statistics.median(ok) * 1000:.1f} ms, "
                      f"max {ok[-1] * 1000:.1f} ms; within 3 s: {sum(t < 3 for t in ok)}/{len(times)}")
            else:
                print(f"callbacks answered 200: 0/{len(times)} (each gave up after 10 s)")
            print("healthz: " + (f"{health * 1000:.1f} ms" if health is not None else "no answer within 10 s"))
        finally:
            stop.set()
            for s in socks:
                s.close()
            stop_process(proc)


if __name__ == "__main__":
    main()
