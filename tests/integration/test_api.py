"""The read API through HTTP: each endpoint, each parameter, pagination while rows arrive, caching."""

from __future__ import annotations

import pytest

from receiver.timeutil import ms_to_iso, now_ms
from tests.support.api import add_event, add_job, add_snapshot, conforms, get_error, get_ok
from tests.support.builders import JOB

T0 = 1796212805123
HIST = f"/v1/jobs/{JOB}/snapshots"


@pytest.fixture
def job(svc):  # type: ignore[no-untyped-def]
    add_job(svc)
    return JOB


def test_healthz_readyz(client):
    assert get_ok(client, "/healthz", "Status") == {"status": "ok"}
    assert get_ok(client, "/readyz", "Status") == {"status": "ready", "credentials": "configured"}


def test_no_credentials_warn_once_at_start_and_show_in_readyz(settings, caplog):
    # Issue 14 item 9: no credentials at all used to start silently, then fail every event.
    import logging

    from receiver.services import services
    from tests.support.builders import build_app

    with caplog.at_level(logging.WARNING, logger="receiver"):
        app = build_app(settings.with_(access_key_id=None, access_key_secret=None, security_token=None))
    try:
        warnings = [r for r in caplog.records if "credentials" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in warnings[0].getMessage()
        # Still ready (readiness is the database; callbacks are recorded for a replay), but it says so.
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 200
        assert resp.get_json() == {"status": "ready", "credentials": "missing"}
        # A secret without its id (or the reverse) is no credential either.
        from receiver.web.api import credentials_status

        assert credentials_status(settings.with_(access_key_id=None)) == "missing"
        assert credentials_status(settings.with_(access_key_secret="")) == "missing"
        assert credentials_status(settings) == "configured"
    finally:
        services(app).close()


def test_configured_credentials_start_without_the_warning(settings, caplog):
    import logging

    from receiver.services import services
    from tests.support.builders import build_app

    with caplog.at_level(logging.WARNING, logger="receiver"):
        app = build_app(settings)
    services(app).close()
    assert not [r for r in caplog.records if "credentials" in r.getMessage()]


def test_readyz_refuses_a_database_behind_head(client, svc):
    with svc.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'old'")
    body = get_error(client, "/readyz", 503, "NotReady")
    assert "receiver db upgrade" in body["error"]["message"]


def test_jobs_list_with_latest_each_and_keyset_pages(client, svc):
    for j in ("job-a", "job-b", "job-c"):
        add_job(svc, j)
    add_snapshot(svc, T0, "job-a")
    newest_a = add_snapshot(svc, T0 + 5000, "job-a")
    add_snapshot(svc, T0 + 1000, "job-c")
    page = get_ok(client, "/v1/jobs?limit=2", "JobPage")
    assert [j["job_id"] for j in page["items"]] == ["job-a", "job-b"]
    assert page["items"][0]["latest"]["id"] == str(newest_a)
    assert page["items"][1]["latest"] is None
    assert page["items"][0]["tracked"] is True
    page2 = get_ok(client, f"/v1/jobs?limit=2&cursor={page['next_cursor']}", "JobPage")
    assert [j["job_id"] for j in page2["items"]] == ["job-c"] and page2["next_cursor"] is None
    assert page2["items"][0]["latest"]["captured_at_ms"] == T0 + 1000


def _selects_for(client, svc, url: str) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import event

    statements: list[str] = []

    def count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append(statement)

    event.listen(svc.engine, "before_cursor_execute", count)
    try:
        assert client.get(url).status_code == 200
    finally:
        event.remove(svc.engine, "before_cursor_execute", count)
    return len(statements)


def test_jobs_list_costs_the_same_statements_for_3_or_30_jobs(client, svc):
    def fill(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            add_job(svc, f"job-{i:02d}")
            add_snapshot(svc, T0 + i, f"job-{i:02d}")
            add_snapshot(svc, T0 + i + 1, f"job-{i:02d}")

    fill(0, 3)
    few = _selects_for(client, svc, "/v1/jobs")
    fill(3, 30)
    assert _selects_for(client, svc, "/v1/jobs") == few  # not one query per job
    assert len(get_ok(client, "/v1/jobs", "JobPage")["items"]) == 30


def test_job_detail_has_counters(client, svc, job):
    add_snapshot(svc, T0)
    add_snapshot(svc, T0 + 5000)
    add_event(svc, "a", "done")
    add_event(svc, "b", "failed")
    add_event(svc, "c", "failed")
    body = get_ok(client, f"/v1/jobs/{JOB}", "JobDetail")
    assert body["counters"]["snapshots"] == 2
    assert body["counters"]["events"] == {"pending": 0, "processing": 0, "done": 1, "rejected": 0, "failed": 2}
    assert body["counters"]["first_captured_at"] == ms_to_iso(T0)
    assert body["latest"]["captured_at_ms"] == T0 + 5000
    assert body["sequence_format"] == "snapshot/{JobId}/{UnixTimestamp}.jpg"
    get_error(client, "/v1/jobs/nope", 404, "NotFound")


def test_history_order_range_and_json_shape(client, svc, job):
    ids = [add_snapshot(svc, T0 + i * 1000) for i in range(5)]
    page = get_ok(client, HIST, "SnapshotPage")
    assert [s["id"] for s in page["items"]] == [str(i) for i in reversed(ids)]
    snap = page["items"][-1]
    assert snap["captured_at_ms"] == T0 and snap["captured_at"] == "2026-12-02T12:00:05.123Z"
    assert snap["thumbnails"][0]["url"] == f"/v1/snapshots/{ids[0]}/thumbnail?width=320"
    asc = get_ok(client, f"{HIST}?order=asc", "SnapshotPage")
    assert [s["id"] for s in asc["items"]] == [str(i) for i in ids]
    # since inclusive, until exclusive; ISO and Unix ms mean the same.
    for since, until in ((T0 + 1000, T0 + 3000), (ms_to_iso(T0 + 1000), ms_to_iso(T0 + 3000))):
        got = get_ok(client, f"{HIST}?since={since}&until={until}&order=asc", "SnapshotPage")
        assert [s["captured_at_ms"] for s in got["items"]] == [T0 + 1000, T0 + 2000]
    get_error(client, "/v1/jobs/unknown-job/snapshots", 404, "NotFound")


def test_history_pages_are_stable_while_snapshots_arrive(client, svc, job):
    for i in range(10):
        add_snapshot(svc, T0 + i * 1000)
    seen: list[int] = []
    url = f"{HIST}?limit=3"
    inserted = 0
    while True:
        page = get_ok(client, url, "SnapshotPage")
        seen += [s["captured_at_ms"] for s in page["items"]]
        # New snapshots keep arriving at the head (newer) and, via the reconciler, further back.
        add_snapshot(svc, T0 + 100_000 + inserted)
        add_snapshot(svc, T0 + 500 + inserted * 1000)  # between existing rows, some behind us, some ahead
        inserted += 1
        if page["next_cursor"] is None:
            break
        url = f"{HIST}?limit=3&cursor={page['next_cursor']}"
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert set(range(T0, T0 + 10_000, 1000)) <= set(seen), "a row present from the start was skipped"
    assert seen == sorted(seen, reverse=True)


def test_history_pages_with_equal_timestamps_break_ties_by_id(client, svc, job):
    ids = [add_snapshot(svc, T0) for _ in range(5)]
    got: list[str] = []
    url = f"{HIST}?limit=2&order=asc"
    while url:
        page = get_ok(client, url, "SnapshotPage")
        got += [s["id"] for s in page["items"]]
        url = page["next_cursor"] and f"{HIST}?limit=2&order=asc&cursor={page['next_cursor']}"
    assert got == [str(i) for i in ids]


def test_history_cache_headers_and_304(client, svc, job):
    add_snapshot(svc, T0)
    live = client.get(HIST)
    assert live.headers["Cache-Control"] == "no-cache"
    assert client.get(HIST, headers={"If-None-Match": live.headers["ETag"]}).status_code == 304
    add_snapshot(svc, T0 + 1)
    assert client.get(HIST, headers={"If-None-Match": live.headers["ETag"]}).status_code == 200
    past = client.get(f"{HIST}?until=2020-01-01T00:00:00Z")
    assert past.headers["Cache-Control"] == "public, max-age=300"
    future = client.get(f"{HIST}?until={now_ms() + 60_000}")
    assert future.headers["Cache-Control"] == "no-cache"


def test_latest(client, svc, job):
    get_error(client, f"/v1/jobs/{JOB}/snapshots/latest", 404, "NotFound")
    add_snapshot(svc, T0 + 5000)
    add_snapshot(svc, T0)
    assert get_ok(client, f"/v1/jobs/{JOB}/snapshots/latest", "Snapshot")["captured_at_ms"] == T0 + 5000
    get_error(client, "/v1/jobs/other/snapshots/latest", 404, "NotFound")


@pytest.mark.parametrize(("t", "expected"), [
    (T0 - 99_000, T0),  # before everything: the first
    (T0, T0),  # exact
    (T0 + 2000, T0),  # exactly between: the earlier
    (T0 + 2001, T0 + 4000),
    (T0 + 3999, T0 + 4000),
    (T0 + 10_000_000, T0 + 4000),  # after everything: the last
])
def test_nearest(client, svc, job, t, expected):
    add_snapshot(svc, T0)
    add_snapshot(svc, T0 + 4000)
    add_snapshot(svc, T0 + 4000, job_id="other-job")  # never another job's
    body = get_ok(client, f"/v1/jobs/{JOB}/snapshots/nearest?time={t}", "Snapshot")
    assert body["captured_at_ms"] == expected and body["job_id"] == JOB
    iso = get_ok(client, f"/v1/jobs/{JOB}/snapshots/nearest?time={ms_to_iso(t)}", "Snapshot")
    assert iso["captured_at_ms"] == expected


def test_nearest_needs_time_and_a_snapshot(client, svc, job):
    get_error(client, f"/v1/jobs/{JOB}/snapshots/nearest", 400, "MissingParameter")
    get_error(client, f"/v1/jobs/{JOB}/snapshots/nearest?time={T0}", 404, "NotFound")


def test_one_snapshot(client, svc, job):
    sid = add_snapshot(svc, T0)
    body = get_ok(client, f"/v1/snapshots/{sid}", "Snapshot")
    assert body["id"] == str(sid) and body["source"]["object"] == f"snapshot/{JOB}/{T0}.jpg"
    for bad in ("999999", "abc", "²", "1" * 40):
        get_error(client, f"/v1/snapshots/{bad}", 404, "NotFound")


def test_thumbnail_bytes_etag_immutable_and_304_without_reading(client, svc, job):
    sid = add_snapshot(svc, T0, data=b"\xff\xd8jpeg-bytes")
    resp = client.get(f"/v1/snapshots/{sid}/thumbnail")
    assert resp.status_code == 200 and resp.data == b"\xff\xd8jpeg-bytes"
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = resp.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    # Delete the stored files: a revalidation must still answer 304 from the index alone.
    svc.thumbs.delete([f"t/snapshot/{JOB}/{T0}.jpg/{w}.jpg" for w in (320, 160)])
    not_modified = client.get(f"/v1/snapshots/{sid}/thumbnail", headers={"If-None-Match": f'"x", {etag}'})
    assert not_modified.status_code == 304 and not_modified.headers["ETag"] == etag and not not_modified.data
    get_error(client, f"/v1/snapshots/{sid}/thumbnail", 404, "NotFound")


def test_thumbnail_widths(client, svc, job):
    sid = add_snapshot(svc, T0, data=b"x")
    small = client.get(f"/v1/snapshots/{sid}/thumbnail?width=160")
    large = client.get(f"/v1/snapshots/{sid}/thumbnail?width=320")
    assert small.status_code == large.status_code == 200 and small.headers["ETag"] != large.headers["ETag"]
    for bad in ("321", "abc", "-1", "²", "99999999999"):
        body = get_error(client, f"/v1/snapshots/{sid}/thumbnail?width={bad}", 400, "InvalidParameter")
        assert "160, 320" in body["error"]["message"]
    narrow = add_snapshot(svc, T0 + 1, data=b"y", widths=(200, 160))  # source narrower than 320: not upscaled
    assert client.get(f"/v1/snapshots/{narrow}/thumbnail?width=320").status_code == 200
    get_error(client, "/v1/snapshots/424242/thumbnail", 404, "NotFound")


def test_events_filter_and_pages_newest_first(client, svc, job):
    ids = [add_event(svc, f"e{i}", "failed" if i % 2 else "done") for i in range(7)]
    add_event(svc, "other", "failed", job_id="other-job")
    page = get_ok(client, f"/v1/events?job_id={JOB}&limit=3", "EventPage")
    assert [e["id"] for e in page["items"]] == [str(i) for i in reversed(ids[-3:])]
    add_event(svc, "late", "failed")  # arrives mid-paging: newer, so it never shifts later pages
    rest: list[str] = []
    cursor = page["next_cursor"]
    while cursor:
        p = get_ok(client, f"/v1/events?job_id={JOB}&limit=3&cursor={cursor}", "EventPage")
        rest += [e["id"] for e in p["items"]]
        cursor = p["next_cursor"]
    assert rest == [str(i) for i in reversed(ids[:-3])]
    failed = get_ok(client, f"/v1/events?status=failed&job_id={JOB}", "EventPage")["items"]
    assert {e["status"] for e in failed} == {"failed"} and len(failed) == 4
    assert failed[0]["last_error"] == "boom"
    assert len(get_ok(client, "/v1/events?status=failed", "EventPage")["items"]) == 5
    # A cursor is bound to its filters.
    get_error(client, f"/v1/events?job_id=other-job&cursor={page['next_cursor']}", 400, "InvalidCursor")


@pytest.mark.parametrize("query", [
    "since=yesterday", "until=2026-13-01", "since=99999999999999999999999", "until=%C2%B2", "since=1e10",
    "limit=0", "limit=1001", "limit=-5", "limit=abc", "limit=%C2%B2", "limit=10.5",
    "order=up", "cursor=garbage", "cursor=%FF%FE", "cursor=" + "A" * 2000,
])
def test_bad_history_parameters_are_400(client, svc, job, query):
    body = get_error(client, f"{HIST}?{query}", 400)
    assert body["error"]["code"] in {"InvalidParameter", "InvalidCursor"}


@pytest.mark.parametrize("url", [
    "/v1/events?status=exploded", "/v1/events?limit=0", "/v1/events?cursor=x",
    "/v1/jobs?limit=5000", "/v1/jobs?cursor=abc",
    f"/v1/jobs/{JOB}/snapshots/nearest?time=noon",
    f"/v1/jobs/{JOB}/snapshots/nearest?time=-99999999999999999",
])
def test_bad_parameters_elsewhere_are_400(client, svc, job, url):
    get_error(client, url, 400)


def test_forged_and_foreign_cursors_are_refused(client, svc, job):
    import base64
    import json

    for i in range(3):
        add_snapshot(svc, T0 + i)
    cursor = get_ok(client, f"{HIST}?limit=1", "SnapshotPage")["next_cursor"]
    blob = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    forged = base64.urlsafe_b64encode(blob[:12] + json.dumps([f"snapshots:{JOB}:desc", [0, 0]]).encode()).decode()
    get_error(client, f"{HIST}?cursor={forged}", 400, "InvalidCursor")
    get_error(client, f"{HIST}?order=asc&cursor={cursor}", 400, "InvalidCursor")  # issued for desc
    get_error(client, f"/v1/events?cursor={cursor}", 400, "InvalidCursor")
    assert get_ok(client, f"{HIST}?limit=1&cursor={cursor}", "SnapshotPage")["items"][0]["captured_at_ms"] == T0 + 1


def test_unknown_methods_and_paths_get_the_error_object(client):
    resp = client.post("/v1/jobs")
    assert resp.status_code == 405 and "GET" in resp.headers["Allow"]
    conforms(client, resp.get_json(), "Error")
    get_error(client, "/v1/nothing-here", 404)
