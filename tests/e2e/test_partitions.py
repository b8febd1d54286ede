"""Day partitions on a real PostgreSQL (migration 0007): the tables after `db upgrade`, partitions ahead, old and
future snapshots landing, the API answering as on SQLite, tiered retention dropping whole days as partitions,
and the conversion of a database that already has rows at revision 0004."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from receiver.app import create_app
from receiver.config import Settings
from receiver.db import partitions
from receiver.db.engine import make_engine
from receiver.db.migrate import upgrade
from receiver.ops.maintenance import Maintenance
from receiver.ops.retention import apply_retention, prune
from receiver.services import Services, services
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.tiers import DAY_MS, parse_retention
from receiver.timeutil import now_ms
from receiver.worker.dispatch import drain

# The SQLite tiered-retention tests, collected again here with this module's PostgreSQL `settings`.
from tests.integration.test_retention_tiers import (  # noqa: F401
    TIERS,
    history,
    index_history,
    keys_by_snapshot,
    moment,
    rows,
    test_a_dry_run_reports_what_the_real_run_then_does,
    test_receiver_prune_applies_retention_and_says_what_it_would_do,
    test_retention_counts_the_same_on_a_second_look,
    test_tiers_keep_the_first_per_job_per_clock_bucket_and_remove_the_rest_with_their_files,
)
from tests.support.builders import build_app, callback_body, put_snapshot
from tests.support.pg_redis import pg_head_url, pg_server, pg_url  # noqa: F401


def base_settings(tmp_path: Path, fake_ice: FakeIce, fake_oss: FakeOss, url: str) -> Settings:
    return Settings(
        data_dir=tmp_path, database_url=url, ice_endpoint=fake_ice.url, access_key_id="testAccessKeyId",
        access_key_secret="testAccessKeySecret", oss_endpoint_map={"oss-cn-shanghai.aliyuncs.com": fake_oss.url},
        workers=2, retry_base_seconds=0.01, retry_max_seconds=0.2, sweep_seconds=0.05, lease_seconds=5,
        max_attempts=5, ice_timeout_ms=2000, oss_timeout_seconds=2, reconcile_seconds=0,
    )


@pytest.fixture
def settings(tmp_path: Path, fake_ice: FakeIce, fake_oss: FakeOss, pg_head_url: str) -> Settings:  # noqa: F811
    return base_settings(tmp_path, fake_ice, fake_oss, pg_head_url)


def sql(svc: Services, query: str, **params: Any) -> list[Any]:
    with svc.engine.connect() as conn:
        return list(conn.execute(text(query), params).all())


def children(svc: Services, table: str) -> set[str]:
    return {r[0] for r in sql(svc, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                   "WHERE i.inhparent = to_regclass(:t)", t=table)}


def day_partitions_for(days: list[int], table: str = "snapshots") -> set[str]:
    return {partitions.partition_name(table, d) for d in days}


def test_upgrade_makes_partitioned_tables_with_days_ahead_and_a_default(svc: Services):
    kinds = dict(sql(svc, "SELECT relname, relkind FROM pg_class WHERE relname IN "
                          "('snapshots', 'thumbnails', 'event_snapshots', 'events', 'jobs')"))
    assert kinds == {"snapshots": "p", "thumbnails": "p", "event_snapshots": "p", "events": "r", "jobs": "r"}
    today = now_ms() // DAY_MS * DAY_MS
    for table in partitions.TABLES:
        have = children(svc, table)
        assert f"{table}_default" in have
        # The template database was migrated when this session started: today's days are there (a test run
        # crossing midnight is still covered by yesterday .. 7 days ahead).
        assert day_partitions_for([today + i * DAY_MS for i in range(0, 7)], table) <= have
    key = sql(svc, "SELECT pg_get_partkeydef('snapshots'::regclass)")[0][0]
    assert key == "RANGE (captured_at_ms)"


def test_maintenance_keeps_seven_days_ahead(svc: Services):
    far = now_ms() // DAY_MS * DAY_MS + 7 * DAY_MS
    with svc.engine.begin() as conn:
        partitions.drop_day(conn, far)
    assert partitions.partition_name("snapshots", far) not in children(svc, "snapshots")
    assert "partitions" in Maintenance(svc).run_once()
    for table in partitions.TABLES:
        assert partitions.partition_name(table, far) in children(svc, table)
    assert "partitions" not in Maintenance(svc).run_once()  # nothing left to make


def where(svc: Services, ms: int) -> str:
    return sql(svc, "SELECT tableoid::regclass::text FROM snapshots WHERE captured_at_ms = :ms", ms=ms)[0][0]


def test_old_and_future_snapshots_land_and_move_into_their_day_when_it_is_made(client, svc: Services, fake_ice,
                                                                            fake_oss, frame):
    now = now_ms()
    old, future = now - 400 * DAY_MS, now + 30 * DAY_MS
    for ms in (old, now, future):
        key = put_snapshot(fake_oss, fake_ice, ms, frame)
        assert client.post("/callbacks/live-snapshot", data=callback_body(key, ms)).status_code == 200
    assert drain(svc) == 3
    assert where(svc, old) == where(svc, future) == "snapshots_default"
    assert where(svc, now) == partitions.partition_name("snapshots", now // DAY_MS * DAY_MS)
    # Making the future day's partitions moves its rows out of the default partition, thumbnails too.
    with svc.engine.begin() as conn:
        assert partitions.ensure_day(conn, future // DAY_MS * DAY_MS)
    assert where(svc, future) == partitions.partition_name("snapshots", future // DAY_MS * DAY_MS)
    assert sql(svc, "SELECT count(*) FROM thumbnails_default")[0][0] == 2  # the old one's two widths
    with svc.engine.connect() as conn:  # their keys have the day: dropping it finds them by its prefixes
        assert not partitions.has_legacy_keys(conn, future // DAY_MS * DAY_MS)
    resp = client.get("/v1/jobs/job-0001/snapshots?order=asc")
    assert [s["captured_at_ms"] for s in resp.get_json()["items"]] == [old, now, future]
    assert all(len(s["thumbnails"]) == 2 for s in resp.get_json()["items"])


def test_tiered_prune_drops_whole_days_as_partitions(client, svc: Services, fake_ice, fake_oss, frame):
    now = moment()
    old_days = sorted({ms // DAY_MS * DAY_MS for _, ms in history(now)})
    with svc.engine.begin() as conn:
        for day in old_days:  # as the maintenance loop made them when those days were ahead
            partitions.ensure_day(conn, day)
    index_history(client, svc, fake_ice, fake_oss, frame, now)
    assert sql(svc, "SELECT count(*) FROM snapshots_default")[0][0] == 0
    before = rows(svc)
    keys = keys_by_snapshot(svc)
    cutoff = (now - 5 * DAY_MS) // DAY_MS * DAY_MS
    doomed_days = [d for d in old_days if d < cutoff]
    assert len(doomed_days) == 2  # 5 d 13 h ago (the day before the cutoff's), and 7 d ago (two snapshots)
    result = apply_retention(svc, parse_retention(TIERS), now=now)
    assert not result.errors
    assert result.days == {partitions.day_name(d): n for d, n in
                           ((d, sum(1 for _, _, ms in before if d <= ms < d + DAY_MS)) for d in doomed_days)}
    assert result.per_job == {}  # nothing deleted row by row past the cutoff: the days went whole
    for table in partitions.TABLES:
        assert not day_partitions_for(doomed_days, table) & children(svc, table)
        assert day_partitions_for([d for d in old_days if d >= cutoff], table) <= children(svc, table)
    left = {sid for sid, _, _ in rows(svc)}
    for sid, paths in keys.items():
        for key in paths:
            assert svc.thumbs.exists(key) == (sid in left), key
    assert apply_retention(svc, parse_retention(TIERS), now=now).days == {}


VARYING = ("id", "url", "next_cursor", "fetched_at", "created_at")


def normalized(value: Any) -> Any:
    """An API answer without what differs between two databases fed the same history: ids (and the URLs and
    cursors that carry them) and the moments rows were written."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def test_the_api_answers_as_on_sqlite_for_the_same_history(tmp_path: Path, client, svc: Services, fake_ice,
                                                           fake_oss, frame, settings: Settings):
    now = moment()
    lite_settings = settings.with_(database_url=f"sqlite:///{tmp_path / 'lite.db'}",
                                   thumbnail_store=f"file://{tmp_path / 'lite-thumbs'}")
    lite_app = build_app(lite_settings)
    lite = services(lite_app)
    try:
        index_history(client, svc, fake_ice, fake_oss, frame, now)
        lite_client = lite_app.test_client()
        for job, ms in history(now):  # the same callbacks, to the SQLite app
            key = f"snapshot/{job}/{ms}.jpg"
            lite_client.post("/callbacks/live-snapshot", data=callback_body(key, ms, job=job))
        drain(lite)
        urls = ["/v1/jobs", "/v1/jobs/job-0001", "/v1/jobs/job-0001/snapshots?limit=1000",
                "/v1/jobs/job-0001/snapshots?order=asc&limit=5", "/v1/jobs/job-0002/snapshots/latest",
                f"/v1/jobs/job-0001/snapshots?since={now - 5 * DAY_MS}&until={now - DAY_MS}",
                f"/v1/jobs/job-0001/snapshots/nearest?time={now - 4 * DAY_MS + 30 * 60_000}",
                f"/v1/jobs/job-0002/snapshots/nearest?time={now - 6 * DAY_MS}"]
        for url in urls:
            a, b = client.get(url), lite_client.get(url)
            assert a.status_code == b.status_code == 200, url
            assert normalized(a.get_json()) == normalized(b.get_json()), url
        for r in (apply_retention(svc, parse_retention(TIERS), now=now),
                  apply_retention(lite, parse_retention(TIERS), now=now)):
            assert r.thinned == {"3d:1m": 3, "5d:1h": 3}
        assert [ms for _, _, ms in rows(svc)] == [ms for _, _, ms in rows(lite)]
        for url in urls[2:]:
            a, b = client.get(url), lite_client.get(url)
            assert a.status_code == b.status_code, url
            assert normalized(a.get_json()) == normalized(b.get_json()), url
    finally:
        lite.close()


OLD_ROWS = 7


def test_upgrade_converts_a_database_with_rows_at_0004(pg_url: str, tmp_path: Path, fake_ice, fake_oss,  # noqa: F811
                                                      frame):
    engine = make_engine(pg_url)
    upgrade(engine, "0004")
    now = now_ms()
    midnight = now // DAY_MS * DAY_MS
    times = [midnight - (20 - i) * DAY_MS + 12 * 3_600_000 + i for i in range(OLD_ROWS)]  # noons, 20..14 days back
    thumbs_dir = tmp_path / "thumbnails"
    with engine.begin() as conn:  # what the 0004 code wrote: rows, links, and files under the older keys
        conn.execute(text("INSERT INTO jobs (job_id, tracked, untracked, created_at) VALUES "
                          "('job-0001', true, false, now())"))
        for i, ms in enumerate(times):
            sid = conn.execute(text(
                "INSERT INTO snapshots (job_id, captured_at_ms, kind, oss_endpoint, oss_bucket, oss_object, etag, "
                "size, width, height, sha256, indexed_at) VALUES ('job-0001', :ms, 'sequence', "
                "'oss-cn-shanghai.aliyuncs.com', 'testbucket', :key, :etag, 100, 640, 360, 'x', now()) RETURNING id"),
                {"ms": ms, "key": f"snapshot/job-0001/{ms}.jpg", "etag": f"E{i}"}).scalar_one()
            eid = conn.execute(text(
                "INSERT INTO events (job_id, identity, origin, status, attempts, received_at, updated_at, "
                "next_attempt_at, key_from_ice) VALUES ('job-0001', :ident, 'callback', 'done', 1, now(), now(), "
                "now(), false) RETURNING id"), {"ident": f"i{i}"}).scalar_one()
            conn.execute(text("INSERT INTO event_snapshots (event_id, snapshot_id) VALUES (:e, :s)"),
                         {"e": eid, "s": sid})
            for width in (320, 160):
                key = f"{i:02x}/old{i}/{width}.jpg"
                (thumbs_dir / key).parent.mkdir(parents=True, exist_ok=True)
                (thumbs_dir / key).write_bytes(frame[:100] + bytes([width % 256]))
                conn.execute(text("INSERT INTO thumbnails (snapshot_id, width, height, format, storage_key, size, "
                                  "etag) VALUES (:s, :w, :h, 'jpeg', :k, 101, :t)"),
                             {"s": sid, "w": width, "h": width * 9 // 16, "k": key, "t": f"t{i}-{width}"})
        old_max = conn.execute(text("SELECT max(id) FROM snapshots")).scalar_one()
    upgrade(engine)
    engine.dispose()

    settings = base_settings(tmp_path, fake_ice, fake_oss, pg_url)
    app = create_app(settings)
    svc = services(app)
    client = app.test_client()
    try:
        assert dict(sql(svc, "SELECT relname, relkind FROM pg_class WHERE relname IN ('snapshots', 'thumbnails', "
                             "'event_snapshots')")) == {"snapshots": "p", "thumbnails": "p", "event_snapshots": "p"}
        assert not sql(svc, "SELECT relname FROM pg_class WHERE relname LIKE '%\\_0004%'")
        # Every row is there, each in its day's partition, with its thumbnails and links.
        items = client.get("/v1/jobs/job-0001/snapshots?order=asc").get_json()["items"]
        assert [s["captured_at_ms"] for s in items] == times
        assert [s["id"] for s in items] == [str(i) for i in range(old_max - OLD_ROWS + 1, old_max + 1)]
        assert all([t["width"] for t in s["thumbnails"]] == [320, 160] for s in items)
        for ms in times:
            assert where(svc, ms) == partitions.partition_name("snapshots", ms // DAY_MS * DAY_MS)
        assert sql(svc, "SELECT count(*) FROM event_snapshots")[0][0] == OLD_ROWS
        body = client.get(f"/v1/snapshots/{items[0]['id']}/thumbnail?width=160")
        assert body.status_code == 200 and body.data == frame[:100] + bytes([160])
        assert client.get("/v1/jobs/job-0001/snapshots/latest").get_json()["captured_at_ms"] == times[-1]
        assert client.get(f"/v1/jobs/job-0001/snapshots/nearest?time={times[3] + 1000}").get_json()[
            "captured_at_ms"] == times[3]
        # The sequence goes on from where it was; new thumbnails get the day in their key.
        key = put_snapshot(fake_oss, fake_ice, now, frame)
        client.post("/callbacks/live-snapshot", data=callback_body(key, now))
        assert drain(svc) == 1
        latest = client.get("/v1/jobs/job-0001/snapshots/latest").get_json()
        assert int(latest["id"]) > old_max
        new_keys = [r[0] for r in sql(svc, "SELECT storage_key FROM thumbnails WHERE snapshot_id = :s",
                                      s=int(latest["id"]))]
        assert all(k.split("/")[1] == partitions.day_name(now // DAY_MS * DAY_MS) for k in new_keys)
        # Dropping the copied days removes their files by the rows' (older) keys.
        result = prune(svc, 17 * 86400, now=midnight + 6 * 3_600_000)  # cutoff 17 days back at 06:00
        assert not result.errors and result.per_job == {}
        assert result.days == {partitions.day_name(midnight - d * DAY_MS): 1 for d in (20, 19, 18)}
        assert sorted(p.name for p in thumbs_dir.rglob("*.jpg")) == sorted(
            [f"{w}.jpg" for _ in range(OLD_ROWS - 3) for w in (320, 160)] + [Path(k).name for k in new_keys])
    finally:
        svc.close()


def test_a_copied_row_moved_out_of_the_default_partition_keeps_its_files_findable(pg_url: str, tmp_path: Path,  # noqa: F811
                                                                                   fake_ice, fake_oss):
    """The upgrade marks the day partitions it fills with rows under older keys (no day in the key) up to a month
    ahead; a copied row further ahead waits in the default partition. When maintenance later makes its day, the
    move carries the mark, so dropping that day deletes the row's files instead of orphaning them."""
    engine = make_engine(pg_url)
    upgrade(engine, "0004")
    day = now_ms() // DAY_MS * DAY_MS + 40 * DAY_MS
    ms = day + 12 * 3_600_000
    key = "ab/old0/320.jpg"
    (tmp_path / "thumbnails" / "ab" / "old0").mkdir(parents=True)
    (tmp_path / "thumbnails" / key).write_bytes(b"old layout")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (job_id, tracked, untracked, created_at) VALUES "
                          "('job-0001', true, false, now())"))
        sid = conn.execute(text(
            "INSERT INTO snapshots (job_id, captured_at_ms, kind, oss_endpoint, oss_bucket, oss_object, etag, "
            "size, width, height, sha256, indexed_at) VALUES ('job-0001', :ms, 'sequence', "
            "'oss-cn-shanghai.aliyuncs.com', 'testbucket', :key, 'E', 100, 640, 360, 'x', now()) RETURNING id"),
            {"ms": ms, "key": f"snapshot/job-0001/{ms}.jpg"}).scalar_one()
        conn.execute(text("INSERT INTO thumbnails (snapshot_id, width, height, format, storage_key, size, etag) "
                          "VALUES (:s, 320, 180, 'jpeg', :k, 10, 't')"), {"s": sid, "k": key})
    upgrade(engine)
    engine.dispose()
    svc = services(create_app(base_settings(tmp_path, fake_ice, fake_oss, pg_url)))
    try:
        assert where(svc, ms) == "snapshots_default"
        with svc.engine.begin() as conn:  # what maintenance does once the day is a week ahead
            assert partitions.ensure_day(conn, day)
        assert where(svc, ms) == partitions.partition_name("snapshots", day)
        with svc.engine.connect() as conn:
            assert partitions.has_legacy_keys(conn, day)
        result = prune(svc, DAY_MS / 1000, now=day + 2 * DAY_MS)
        assert not result.errors and result.days[partitions.day_name(day)] == 1  # (and the empty days before)
        assert result.thumbnails == 1 and not (tmp_path / "thumbnails" / key).exists()
    finally:
        svc.close()


def test_models_and_migrations_agree_on_postgresql(pg_head_url: str):  # noqa: F811
    from tests.e2e.test_postgres import alembic_check

    engine = make_engine(pg_head_url)
    try:
        alembic_check(engine)
    finally:
        engine.dispose()


def test_a_json_answer_survives_the_round_trip():
    assert normalized(json.loads('{"id": "1", "a": [{"url": "x", "b": 2}]}')) == {"a": [{"b": 2}]}
