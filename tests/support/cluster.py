"""The scale-out deployment as subprocesses: gunicorn (receiver.wsgi) and `receiver worker` Celery workers on
PostgreSQL + Redis, talking to a fake ICE and a fake OSS that live in the calling process.

Used by tests/test_scale_e2e.py and bench/scale.py. Every process is bounded in time and stopped by stop().
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from receiver.db.engine import make_engine
from receiver.db.migrate import upgrade
from receiver.db.models import Event, Snapshot
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from tests.support.pg_redis import free_port, stop_process, wait_healthy, wait_port

ROOT = Path(__file__).resolve().parents[2]
AK, SK = "testAccessKeyId", "testAccessKeySecret"
OSS_ENDPOINT = "oss-cn-shanghai.aliyuncs.com"
BUCKET = "testbucket"
THUMB_BUCKET = "thumbs"


class Cluster:
    def __init__(self, db_url: str, broker_url: str, ice: FakeIce, oss: FakeOss, log_dir: Path,
                 web_workers: int = 2, extra_env: dict[str, str] | None = None) -> None:
        self.db_url, self.broker_url, self.ice, self.oss = db_url, broker_url, ice, oss
        self.log_dir = log_dir
        self.web_workers = web_workers
        self.port = free_port()
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "RECEIVER_DATABASE_URL": db_url,
            "RECEIVER_QUEUE": "celery",
            "RECEIVER_BROKER_URL": broker_url,
            "RECEIVER_ICE_ENDPOINT": ice.url,
            "ALIBABA_CLOUD_ACCESS_KEY_ID": AK,
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SK,
            "RECEIVER_OSS_ENDPOINT_MAP": f"{OSS_ENDPOINT}={oss.url}",
            "RECEIVER_THUMBNAIL_STORE": f"oss://{THUMB_BUCKET}/t?endpoint={OSS_ENDPOINT}",
            "RECEIVER_THUMBNAIL_WIDTHS": "160",
            "RECEIVER_DATA_DIR": str(log_dir),
            "RECEIVER_WORKERS": "1",
            "RECEIVER_LEASE_SECONDS": "3",
            "RECEIVER_REDISPATCH_SECONDS": "3",
            "RECEIVER_SWEEP_SECONDS": "0.5",
            "RECEIVER_RETRY_BASE_SECONDS": "0.2",
            "RECEIVER_RECONCILE_SECONDS": "0",
            "RECEIVER_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        self.env.pop("CI", None)  # irrelevant to the services; keeps their environment like production
        for name in [BUCKET, THUMB_BUCKET]:
            oss.create_bucket(name)  # idempotent
        engine = make_engine(db_url)
        upgrade(engine)
        self.engine: Engine = engine

    def _spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it
        try:
            return subprocess.Popen(args, cwd=ROOT, env={**self.env, **(env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            log.close()

    def start_web(self) -> None:
        self.web = self._spawn(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--bind",
             f"127.0.0.1:{self.port}", "--workers", str(self.web_workers), "receiver.wsgi:app"], "web")
        wait_port(self.port, 60, self.web)
        # The port opens when gunicorn's master binds it; its workers may still be importing (seconds on a busy
        # machine), and a callback sent before then waits for them.
        wait_healthy(self.port, self.web, 120)

    def start_worker(self, pool: str = "solo", **env: str) -> subprocess.Popen[bytes]:
        """One `receiver worker` process (its concurrency is RECEIVER_WORKERS: 1 unless env says)."""
        proc = self._spawn([sys.executable, "-m", "receiver", "worker", "--pool", pool], f"worker{len(self.workers)}",
                           env)
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        procs = [p for p in [*self.workers, *([self.web] if self.web else [])] if p.poll() is None]
        for p in procs:  # all at once: each shutdown is graceful and takes a moment
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            stop_process(p, signal.SIGTERM, timeout=20)
        self.engine.dispose()

    # --- driving it -------------------------------------------------------------------------------------

    def post(self, bodies: Iterable[bytes], threads: int = 8) -> list[dict[str, Any]]:
        def one(body: bytes) -> dict[str, Any]:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("POST", "/callbacks/live-snapshot", body=body,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                assert resp.status == 200, (resp.status, data[:300])
                return dict(json.loads(data))
            finally:
                conn.close()

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, bodies))

    def counts(self, job_id: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Event.status, func.count()).where(Event.job_id == job_id)
                                .group_by(Event.status)).all()
            snaps = conn.execute(select(func.count()).select_from(Snapshot)
                                 .where(Snapshot.job_id == job_id)).scalar_one()
        return {**{str(s): int(n) for s, n in rows}, "snapshots": int(snaps)}

    def wait_done(self, job_id: str, total: int, timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            c = self.counts(job_id)
            if c.get("done", 0) + c.get("failed", 0) + c.get("rejected", 0) >= total or time.monotonic() > deadline:
                return c
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.log_dir.glob("*.log")))


def callback(job_id: str, key: str, ms: int) -> bytes:
    return json.dumps({"EventType": "LiveSnapshotComplete", "MessageBody": {
        "JobId": job_id, "OssObject": key, "OssBucket": BUCKET, "OssEndpoint": OSS_ENDPOINT,
        "CreateTimestamp": ms}}).encode()


def seed(ice: FakeIce, oss: FakeOss, job_id: str, n: int, frame: bytes, t0: int = 1796212805000) -> list[bytes]:
    """n sequence snapshots of job_id in OSS and ICE's file list; returns their callback bodies."""
    bodies = []
    for i in range(n):
        ms = t0 + i * 1000
        key = f"snapshot/{job_id}/{ms}.jpg"
        oss.put(BUCKET, key, frame)
        ice.add_file(job_id, key, ms)
        bodies.append(callback(job_id, key, ms))
    return bodies
