"""PostgreSQL connections without a ping on every checkout (db/engine.py): a connection idle for long is pinged
and replaced if it died; one that dies between two uses fails one statement, the pool is renewed, and the
worker's claim runs again on a new connection. No round trip is spent on a connection just used."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from receiver.app import build_services
from receiver.config import Settings
from receiver.db.engine import make_engine
from receiver.intake.parse import parse_callback
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.worker.pipeline import process_event
from tests.support.builders import callback_body, put_snapshot
from tests.support.pg_redis import pg_head_url, pg_server  # noqa: F401

pytestmark = pytest.mark.slow
T0 = 1796212805123


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(url: str, pid: int) -> None:
    killer = make_engine(url)
    try:
        with killer.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    finally:
        killer.dispose()
    time.sleep(0.1)  # the server closes the socket


def count_statements(engine: Engine) -> list[str]:
    seen: list[str] = []
    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", lambda _c, _cur, stmt, *_: seen.append(stmt))
    return seen


def test_an_idle_connection_that_died_is_replaced_on_checkout(pg_head_url: str) -> None:  # noqa: F811
    engine = make_engine(pg_head_url, ping_after_idle_s=0.2)
    try:
        first = backend_pid(engine)
        terminate(pg_head_url, first)
        time.sleep(0.3)  # idle for longer than the ping threshold
        assert backend_pid(engine) != first  # pinged, found dead, replaced: the caller saw nothing
    finally:
        engine.dispose()


def test_a_connection_just_used_is_not_pinged_and_a_dead_one_fails_once(pg_head_url: str) -> None:  # noqa: F811
    engine = make_engine(pg_head_url, ping_after_idle_s=60)
    try:
        first = backend_pid(engine)
        statements = count_statements(engine)
        assert backend_pid(engine) == first
        assert statements == ["SELECT pg_backend_pid()"]  # no ping before it
        terminate(pg_head_url, first)
        with pytest.raises(DBAPIError) as failed:
            backend_pid(engine)
        assert failed.value.connection_invalidated  # the pool is renewed ...
        assert backend_pid(engine) != first  # ... and the next statement runs on a new connection
    finally:
        engine.dispose()


def test_the_claim_runs_again_when_its_connection_died(tmp_path: Path, fake_ice: FakeIce, fake_oss: FakeOss,
                                                       frame: bytes, pg_head_url: str) -> None:  # noqa: F811
    settings = Settings(data_dir=tmp_path, database_url=pg_head_url, ice_endpoint=fake_ice.url,
                        access_key_id="testAccessKeyId", access_key_secret="testAccessKeySecret",
                        oss_endpoint_map={"oss-cn-shanghai.aliyuncs.com": fake_oss.url}, reconcile_seconds=0)
    svc = build_services(settings)
    svc.dispatcher = None
    try:
        key = put_snapshot(fake_oss, fake_ice, T0, frame)
        [eid] = svc.intake.record(parse_callback(callback_body(key, T0))[0]).new_ids
        # Every pooled connection dies (a server restart between two events).
        with svc.engine.connect() as conn:
            pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid()")).scalars().all()
            mine = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        for pid in [*pids, mine]:
            terminate(pg_head_url, pid)
        assert process_event(svc, eid).status == "done"
    finally:
        svc.close()
