"""Webhooks: deliveries per second to a local subscriber, and callback intake while 10 subscriptions are active.

Run on demand:  .venv/bin/python bench/webhooks.py [--messages 2000] [--seconds 4] [--rounds 3] [--backlog 5000]

1. Delivery rate. N messages are written to the outbox of a fresh SQLite database, one subscription points at
   a subscriber on loopback (its own process: a ThreadingHTTPServer answering 204), and a DeliveryEngine with
   1, 4 and 8 threads fans them out and delivers them all: deliveries/s, and per thread.
2. Intake with webhooks busy. `receiver serve` (waitress, SQLite, 2 event workers) with 10 subscriptions to the
   subscriber; ICE is unreachable and RECEIVER_MAX_ATTEMPTS=1, so every callback's event fails at once and
   writes an `event.failed` message: 10 deliveries per callback, far more than the delivery threads can send,
   so they run flat out through the whole phase. Closed-loop callback throughput against `GET /healthz` in the
   same process, interleaved rounds (bench/callbacks.py's load generator), target >= 0.6x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from callbacks import run_phase  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from receiver.config import Settings  # noqa: E402
from receiver.db import outbox  # noqa: E402
from receiver.db.models import Delivery, DeliveryStatus, MessageType  # noqa: E402
from receiver.services import services  # noqa: E402
from receiver.worker.deliveries import DeliveryEngine  # noqa: E402
from tests.support.builders import build_app  # noqa: E402
from tests.support.pg_redis import free_port, wait_healthy, wait_port  # noqa: E402

SUBSCRIBER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204); self.send_header("Content-Length", "0"); self.end_headers()
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H); s.daemon_threads = True; s.serve_forever()
"""
BODY = {"id": "1", "job_id": "bench-job", "captured_at": "2026-11-28T12:00:05.123Z", "kind": "sequence"}


def start_subscriber() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(port)])
    wait_port(port, 10, proc)
    return proc, f"http://127.0.0.1:{port}/hook"


def delivery_rate(url: str, messages: int, threads: int, subs: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        app = build_app(Settings(data_dir=Path(d), webhook_allow_private=True, workers=0, reconcile_seconds=0,
                                 message_retention_days=0))
        svc = services(app)
        try:
            for i in range(subs):
                r = app.test_client().post("/v1/subscriptions", json={"url": f"{url}/{i}",
                                                                       "events": ["snapshot.created"]})
                assert r.status_code == 201, r.get_json()
            with svc.engine.begin() as conn:
                for i in range(messages):
                    outbox.record(conn, MessageType.SNAPSHOT_CREATED, {**BODY, "id": str(i)}, job_id="bench-job",
                                  account=None)
            engine = DeliveryEngine(svc, threads, poll_seconds=0.01)
            start = time.perf_counter()
            engine.start()
            try:
                while True:
                    with svc.readers() as s:
                        done = s.execute(select(func.count()).select_from(Delivery)
                                         .where(Delivery.status == DeliveryStatus.DELIVERED)).scalar_one()
                    if done >= messages * subs:
                        break
                    time.sleep(0.02)
                elapsed = time.perf_counter() - start
            finally:
                engine.stop()
            return messages * subs / elapsed
        finally:
            svc.close()


def seed(data_dir: str, url: str, subscriptions: int, backlog: int) -> None:
    """Subscriptions, then a backlog of messages not yet fanned out: serve's delivery engine starts on them."""
    app = build_app(Settings(data_dir=Path(data_dir), webhook_allow_private=True, workers=0))
    svc = services(app)
    try:
        for i in range(subscriptions):
            r = app.test_client().post("/v1/subscriptions", json={"url": f"{url}/{i}", "events": ["snapshot.created"]})
            assert r.status_code == 201, r.get_json()
        with svc.engine.begin() as conn:
            for i in range(backlog):
                outbox.record(conn, MessageType.SNAPSHOT_CREATED, {**BODY, "id": str(i)}, job_id="bench-job",
                              account=None)
    finally:
        svc.close()


def intake_with_webhooks(url: str, subscriptions: int, seconds: float, rounds: int, backlog: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        seed(d, url, subscriptions, backlog)
        # Event workers off, as in bench/callbacks.py: intake alone, next to a delivery engine sending flat out.
        env = {**os.environ, "RECEIVER_DATA_DIR": d, "RECEIVER_LOG_LEVEL": "ERROR", "RECEIVER_RECONCILE_SECONDS": "0",
               "RECEIVER_ICE_ENDPOINT": "http://127.0.0.1:9", "ALIBABA_CLOUD_ACCESS_KEY_ID": "x",
               "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "y", "RECEIVER_WORKERS": "0", "RECEIVER_WEBHOOK_ALLOW_PRIVATE": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "receiver", "serve", "--port", str(port)], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(port, proc)
            run_phase(port, "/healthz", 4, 1, None, 0)  # warm-up
            run_phase(port, "/callbacks/live-snapshot", 4, 1, None, 100)
            base, cb = [], []
            for r in range(rounds):
                base.append(run_phase(port, "/healthz", 16, seconds, None, 0, proc.pid))
                cb.append(run_phase(port, "/callbacks/live-snapshot", 16, seconds, None, 1000 + 100 * r, proc.pid))
            import sqlite3

            db = sqlite3.connect(f"{d}/receiver.db")
            rows = dict(db.execute("select status, count(*) from deliveries group by status").fetchall())
            messages = db.execute("select count(*) from messages").fetchone()[0]
            db.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ratios = [c["rps"] / b["rps"] for b, c in zip(base, cb, strict=True)]
    print(f"intake with {subscriptions} subscriptions active (serve, event workers off, {backlog} messages to fan "
          f"out and deliver to each; {rounds} rounds of {seconds:.0f} s, 16 connections, medians)")
    for name, rs in (("GET /healthz", base), ("POST callback", cb)):
        print(f"  {name:16} {statistics.median(x['rps'] for x in rs):8.0f} req/s   p99 "
              f"{statistics.median(x['p99_ms'] for x in rs):6.2f} ms   errors {sum(x['errors'] for x in rs):.0f}")
    print(f"  ratio callback/healthz: {statistics.median(ratios):.2f} (per round: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.6)")
    print(f"  by the end: {messages} messages, deliveries {rows}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--subscriptions", type=int, default=10)
    ap.add_argument("--skip-rate", action="store_true")
    ap.add_argument("--backlog", type=int, default=5000, help="messages waiting when serve starts")
    a = ap.parse_args()
    sub, url = start_subscriber()
    try:
        print(f"machine: {os.cpu_count()} cores; SQLite WAL; subscriber: a ThreadingHTTPServer on loopback "
              "(own process)")
        print(f"delivery rate, {a.messages} deliveries in all:")
        # At most 2 attempts per subscription at once (worker/deliveries.py): more threads need more subscribers.
        for threads, subs in (() if a.skip_rate else ((1, 1), (2, 1), (8, 4))):
            rate = delivery_rate(url, a.messages // subs, threads, subs)
            print(f"  {threads} delivery thread(s), {subs} subscription(s): {rate:7.0f} deliveries/s  "
                  f"({rate / threads:6.0f} per thread)")
        for subs in (0, a.subscriptions):  # without subscriptions first: the same service's figure for reference
            intake_with_webhooks(url, subs, a.seconds, a.rounds, a.backlog)
    finally:
        sub.terminate()
        sub.wait(timeout=10)


if __name__ == "__main__":
    main()
