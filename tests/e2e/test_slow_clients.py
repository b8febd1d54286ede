"""1,000 idle or trickling connections held open against `receiver serve` do not stop ICE's callbacks.

ICE waits 3 s for a callback's answer (product.md §3.1). Half the connections send nothing after connecting, half
trickle a request one byte every 0.5-1 s (a slowloris); with them all held by the server, a real callback and a
health request must still be answered within 3 s. A second test shows a trickled request is cut off after
RECEIVER_WEB_REQUEST_SECONDS, however steadily its bytes arrive.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame
from tests.support.builders import callback_body, put_snapshot
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.slow
T0 = 1796212805123
SLOW = 1000
ICE_WAIT = 3.0  # seconds ICE waits for an answer (product.md §3.1)

resource = pytest.importorskip("resource", reason="needs POSIX resource limits")


@pytest.fixture(autouse=True)
def _enough_file_descriptors() -> Iterator[None]:
    """This process holds the client ends, and `serve` inherits the limit (it raises its own soft limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SLOW + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the open-file hard limit ({hard}) is below the {need} this test needs")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _request_bytes(i: int) -> bytes:
    body = callback_body(f"snapshot/slow/{i}.jpg", T0 + i)
    return (b"POST /callbacks/live-snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class SlowClients:
    """`count` connections: the even ones idle after connecting, the odd ones trickling a callback byte by byte."""

    def __init__(self, port: int, count: int) -> None:
        self.socks: list[socket.socket] = []
        self.trickling: dict[socket.socket, tuple[bytes, int]] = {}
        self.closed_by_server = 0
        self.bytes_sent = 0
        self._stop = threading.Event()
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setblocking(False)
            self.socks.append(s)
            if i % 2:
                self.trickling[s] = (_request_bytes(i), 0)
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        rng = random.Random(14)
        while not self._stop.wait(rng.uniform(0.5, 1.0)):  # one byte per trickling connection per round
            for s, (data, sent) in list(self.trickling.items()):
                if sent >= len(data) - 1:  # never the last byte: the request stays incomplete
                    continue
                try:
                    s.send(data[sent:sent + 1])
                except OSError:  # the server closed it
                    self.trickling.pop(s)
                    self.closed_by_server += 1
                    continue
                self.bytes_sent += 1
                self.trickling[s] = (data, sent + 1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for s in self.socks:
            s.close()


@pytest.fixture
def slow_clients() -> Iterator[Callable[[int], SlowClients]]:
    opened: list[SlowClients] = []

    def open_(port: int) -> SlowClients:
        opened.append(SlowClients(port, SLOW))
        return opened[-1]

    yield open_
    for c in opened:
        c.close()


@pytest.fixture
def server(tmp_path: Path, fake_ice: FakeIce, fake_oss: FakeOss) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path, fake_ice, fake_oss, RECEIVER_RETRY_BASE_SECONDS="0.05")
    srv.env.pop("RECEIVER_LEASE_SECONDS", None)  # the defaults, but for the fakes and quiet logs
    yield srv
    srv.stop()


def _server_sockets(pid: int) -> int | None:
    """Sockets the server process holds open (Linux), to know it accepted the connections, not just the kernel."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        return None
    n = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            n += os.readlink(fd).startswith("socket:")
    return n


def _timed(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ICE_WAIT + 2)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - start
    finally:
        conn.close()


def test_callback_answered_within_3s_with_1000_slow_connections_open(server, slow_clients, fake_ice, fake_oss):
    server.start()  # the embedded defaults: only the fakes, the data dir and quiet logs are set
    assert server.proc is not None
    clients = slow_clients(server.port)
    held = _server_sockets(server.proc.pid)
    if held is not None:  # the server itself holds them (not the kernel's accept queue): wait for it to accept
        deadline = time.monotonic() + 20
        while (held := _server_sockets(server.proc.pid) or 0) < SLOW and time.monotonic() < deadline:
            time.sleep(0.2)
        assert held >= SLOW, f"serve accepted only {held} of the {SLOW} connections"
    time.sleep(2)  # a couple of trickle rounds
    assert clients.closed_by_server == 0 and clients.bytes_sent >= SLOW // 2

    timings = []
    for i in range(3):
        key = put_snapshot(fake_oss, fake_ice, T0 + i * 1000, make_frame(seed=i, width=320, height=180))
        status, took = _timed(server.port, "POST", "/callbacks/live-snapshot", callback_body(key, T0 + i * 1000))
        timings.append(took)
        assert status == 200 and took < ICE_WAIT, f"callback answered {status} after {took:.2f} s"
    status, took = _timed(server.port, "GET", "/healthz")
    assert status == 200 and took < ICE_WAIT, f"/healthz answered {status} after {took:.2f} s"
    print(f"\n{SLOW} slow connections held; callbacks answered in "
          f"{', '.join(f'{t * 1000:.0f}' for t in timings)} ms, /healthz in {took * 1000:.0f} ms")
    assert clients.closed_by_server == 0  # still within RECEIVER_WEB_REQUEST_SECONDS: none were cut yet


def test_trickled_request_is_cut_off_after_the_request_time_limit(server, slow_clients):
    server.env["RECEIVER_WEB_REQUEST_SECONDS"] = "3"
    server.start()
    clients = slow_clients(server.port)
    trickling = len(clients.trickling)
    deadline = time.monotonic() + 15
    while clients.trickling and time.monotonic() < deadline:  # bytes keep arriving: inactivity never fires
        time.sleep(0.2)
    assert clients.closed_by_server == trickling, "trickling connections should be closed after 3 s"
    for s in clients.socks[0:40:2]:  # the idle ones were closed too (no complete request within the limit)
        s.setblocking(True)
        s.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(1) == b""
    status, _ = _timed(server.port, "GET", "/healthz")
    assert status == 200


def test_connection_limit_follows_the_open_file_limit(monkeypatch, caplog):
    """A hard limit too low for RECEIVER_WEB_CONNECTIONS lowers the connection limit, with a warning, instead of
    letting accept() fail with EMFILE; a soft limit below a sufficient hard limit is raised."""
    from receiver.cli.server import FD_HEADROOM, allowed_connections

    limits = {"now": (1024, 1024)}

    def setrlimit(_which: int, value: tuple[int, int]) -> None:
        if value[0] > limits["now"][1]:
            raise ValueError("not allowed to raise maximum limit")
        limits["now"] = value

    monkeypatch.setattr(resource, "getrlimit", lambda _which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    with caplog.at_level("WARNING", logger="receiver"):
        assert allowed_connections(2000) == 1024 - FD_HEADROOM
    assert "allows about 768 connections, not the 2000" in caplog.text
    limits["now"] = (1024, 65536)
    assert allowed_connections(2000) == 2000
    assert limits["now"] == (65536, 65536)
