"""SIGKILL `receiver serve` with events in every state; after a restart each reaches a final state once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select

from receiver.db.models import Event, Snapshot
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame
from tests.support.builders import AK, OSS_ENDPOINT, SK, callback_body, put_snapshot
from tests.support.pg_redis import free_port, stop_process, wait_healthy

pytestmark = pytest.mark.slow
T0 = 1796212805123


def wait_for(cond: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Server:
    def __init__(self, tmp: Path, ice: FakeIce, oss: FakeOss) -> None:
        self.port = free_port()
        self.env = {**os.environ, "RECEIVER_DATA_DIR": str(tmp), "RECEIVER_ICE_ENDPOINT": ice.url,
                    "ALIBABA_CLOUD_ACCESS_KEY_ID": AK, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SK,
                    "RECEIVER_OSS_ENDPOINT_MAP": f"{OSS_ENDPOINT}={oss.url}", "RECEIVER_WORKERS": "1",
                    "RECEIVER_LEASE_SECONDS": "4", "RECEIVER_RETRY_BASE_SECONDS": "0.05",
                    "RECEIVER_RECONCILE_SECONDS": "0", "RECEIVER_THUMBNAIL_WIDTHS": "160",
                    "RECEIVER_LOG_LEVEL": "WARNING"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "receiver", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(self.port, self.proc)

    def post(self, body: bytes) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/callbacks/live-snapshot", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def server(tmp_path: Path, fake_ice: FakeIce, fake_oss: FakeOss) -> Iterator[Server]:
    srv = Server(tmp_path, fake_ice, fake_oss)
    yield srv
    srv.stop()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'receiver.db'}")
    yield engine
    engine.dispose()


def statuses(db: Engine) -> Counter[str]:
    with db.connect() as c:
        return Counter(dict(c.execute(select(Event.status, func.count()).group_by(Event.status)).all()))


def test_sigkill_with_events_in_every_state(server, db, fake_ice, fake_oss):
    frame = make_frame(seed=9, width=320, height=180)
    good = [put_snapshot(fake_oss, fake_ice, T0 + i * 1000, frame) for i in range(8)]
    bad = put_snapshot(fake_oss, fake_ice, T0 + 100_000, b"not a jpeg")
    server.start()
    for i, key in enumerate(good[:2]):
        server.post(callback_body(key, T0 + i * 1000))
    server.post(callback_body(bad, T0 + 100_000))
    wait_for(lambda: statuses(db) == {"done": 2, "failed": 1}, what="first events to finish")
    fake_oss.latency = 30.0  # the next GET hangs: one event processing, the rest pending behind it
    for i, key in enumerate(good[2:], start=2):
        server.post(callback_body(key, T0 + i * 1000))
    wait_for(lambda: statuses(db) == {"done": 2, "failed": 1, "processing": 1, "pending": 5},
             what="one processing and five pending")
    server.kill()
    fake_oss.latency = 0.0
    assert statuses(db) == {"done": 2, "failed": 1, "processing": 1, "pending": 5}

    server.start()
    wait_for(lambda: statuses(db) == {"done": 8, "failed": 1}, timeout=60, what="recovery")
    with db.connect() as c:
        objects = Counter(c.execute(select(Snapshot.oss_object)).scalars())
        [reason] = c.execute(select(Event.last_error).where(Event.status == "failed")).scalars()
    assert objects == Counter(good)  # every good file exactly once
    assert reason and "NotAJpeg" in reason


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_process_pool_children_leave_with_serve(server, db, fake_ice, fake_oss, sig):
    """RECEIVER_WORKER_POOL=process: stopping `serve` (SIGTERM) shuts its worker processes down, and killing it
    (SIGKILL) makes them exit on their own; none is left running, holding memory and the database."""
    server.env.update(RECEIVER_WORKER_POOL="process", RECEIVER_WORKERS="2")
    server.start()
    assert server.proc is not None
    for i in range(4):
        server.post(callback_body(put_snapshot(fake_oss, fake_ice, T0 + i * 5000, make_frame(seed=i)), T0 + i * 5000))
    wait_for(lambda: statuses(db).get("done", 0) == 4, what="4 events done by the worker processes")
    children = _children(server.proc.pid)
    assert children, "the process pool should have started worker processes"
    server.proc.send_signal(sig)
    server.proc.wait(timeout=20)
    wait_for(lambda: not any(_alive(c) for c in children), timeout=20, what="worker processes to exit")
