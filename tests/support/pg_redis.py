"""Real PostgreSQL and Redis servers on loopback, in temporary directories, for the scale-out tests.

Import the fixtures into a test module (``from tests.support.pg_redis import pg_server, pg_url, redis_server``). Without
the binaries the tests are skipped with the reason; under CI (``CI`` set) that is a failure instead, because
.ci/run installs them and a silently skipped scale-out suite would prove nothing.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = START_TIMEOUT) -> None:
    """Until the receiver on ``port`` answers /healthz with 200 (tests and bench/ start `receiver serve`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before answering /healthz")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                                                   timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"the receiver on 127.0.0.1:{port} did not answer /healthz after {timeout} s")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the PostgreSQL/Redis tests: .ci/run installs them)")
    pytest.skip(reason)


def pg_bindir() -> Path | None:
    if env := os.environ.get("RECEIVER_TEST_PG_BIN"):
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


class PgServer:
    """One throwaway cluster: initdb + postgres, trust auth on 127.0.0.1 only, durability off for speed."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        # initdb refuses to run as root: run the server as the `postgres` system user when we are root.
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no `postgres` user to run PostgreSQL as")
            self.user = "postgres"
        # Not under pytest's tmp_path: that is mode 0700 for root, so the postgres user could not enter it.
        self.dir = Path(tempfile.mkdtemp(prefix="receiver-pg-"))
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._template: str | None = None

    def _run(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, user=self.user, group=self.user, cwd=self.dir,  # type: ignore[call-overload]
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)

    def start(self) -> PgServer:
        data = self.dir / "data"
        init = self._run(str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--locale=C", "--no-sync")
        _, err = init.communicate(timeout=120)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {err.decode(errors='replace')}")
        self.log = open(self.dir / "postgres.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.dir), "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=400"],
            user=self.user, group=self.user, cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_port(self.port, START_TIMEOUT, self.proc)
        self._wait_accepting()
        return self

    def _wait_accepting(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:  # "the database system is starting up"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def dsn(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, template: str | None = None) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        return name

    def migrated_template(self) -> str:
        """A database at the migrations' head, made once; copy it with create_database(template=...)."""
        if self._template is None:
            from receiver.db.engine import make_engine
            from receiver.db.migrate import upgrade

            name = self.create_database()
            engine = make_engine(self.url(name))
            upgrade(engine)
            engine.dispose()  # a template must have no open connections
            self._template = name
        return self._template

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)  # SIGINT is PostgreSQL's "fast" shutdown
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """redis-server without persistence, so kill + start really loses every queued message."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="receiver-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, START_TIMEOUT, self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = pg_bindir()
    if bindir is None or not (bindir / "postgres").exists():
        _unavailable("PostgreSQL binaries not found (apt-get install postgresql, or set RECEIVER_TEST_PG_BIN)")
    assert bindir is not None
    server = PgServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def pg_head_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database already at the migrations' head (a copy of a template migrated once)."""
    name = pg_server.create_database(template=pg_server.migrated_template())
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server not found (apt-get install redis-server)")
    assert binary is not None
    server = RedisServer(binary)
    try:
        yield server.start()
    finally:
        server.stop()
