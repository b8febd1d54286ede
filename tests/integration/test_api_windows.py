"""The read queries look within a day (or the recent days) first and widen only when that does not answer
(db/queries.py, for PostgreSQL's day partitions): the answers must be the unbounded ones, across gaps of days."""

from __future__ import annotations

from receiver.tiers import DAY_MS
from receiver.timeutil import now_ms
from receiver.worker.dispatch import drain
from tests.support.builders import callback_body, put_snapshot


def index(client, svc, fake_ice, fake_oss, frame, times: list[int]) -> None:
    for ms in times:
        key = put_snapshot(fake_oss, fake_ice, ms, frame)
        assert client.post("/callbacks/live-snapshot", data=callback_body(key, ms)).status_code == 200
    drain(svc)


def pages(client, url: str) -> list[int]:
    seen: list[int] = []
    cursor = None
    while True:
        body = client.get(url + (f"&cursor={cursor}" if cursor else "")).get_json()
        seen += [s["captured_at_ms"] for s in body["items"]]
        assert all(len(s["thumbnails"]) == 2 for s in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


def test_pages_latest_and_nearest_across_gaps_of_days(client, svc, fake_ice, fake_oss, frame):
    now = now_ms()
    times = sorted([now - 40 * DAY_MS, now - 9 * DAY_MS, now - 9 * DAY_MS + 1, now - 3 * DAY_MS,
                    now - 3 * DAY_MS - 1, now - 2 * DAY_MS - 5, now - 3_600_000, now - 1000])
    index(client, svc, fake_ice, fake_oss, frame, times)
    assert pages(client, "/v1/jobs/job-0001/snapshots?limit=2") == times[::-1]
    assert pages(client, "/v1/jobs/job-0001/snapshots?limit=3&order=asc") == times
    assert pages(client, f"/v1/jobs/job-0001/snapshots?limit=2&until={now - 2 * DAY_MS}") == [
        t for t in times[::-1] if t < now - 2 * DAY_MS]
    assert pages(client, f"/v1/jobs/job-0001/snapshots?limit=2&order=asc&since={now - 10 * DAY_MS}") == [
        t for t in times if t >= now - 10 * DAY_MS]
    assert client.get("/v1/jobs/job-0001/snapshots/latest").get_json()["captured_at_ms"] == times[-1]
    for t, want in ((now - 20 * DAY_MS, now - 9 * DAY_MS), (now - 30 * DAY_MS, now - 40 * DAY_MS),
                    (now - 100 * DAY_MS, now - 40 * DAY_MS), (now + 50 * DAY_MS, now - 1000),
                    (now - 6 * DAY_MS + 10, now - 3 * DAY_MS - 1), (now - 6 * DAY_MS, now - 9 * DAY_MS + 1)):
        got = client.get(f"/v1/jobs/job-0001/snapshots/nearest?time={t}").get_json()
        assert got["captured_at_ms"] == want, (t - now) / DAY_MS
    job = client.get("/v1/jobs").get_json()["items"][0]
    assert job["latest"]["captured_at_ms"] == times[-1] and len(job["latest"]["thumbnails"]) == 2


def test_latest_of_a_job_silent_for_weeks(client, svc, fake_ice, fake_oss, frame):
    now = now_ms()
    index(client, svc, fake_ice, fake_oss, frame, [now - 30 * DAY_MS, now - 20 * DAY_MS])
    assert client.get("/v1/jobs/job-0001/snapshots/latest").get_json()["captured_at_ms"] == now - 20 * DAY_MS
    assert client.get("/v1/jobs").get_json()["items"][0]["latest"]["captured_at_ms"] == now - 20 * DAY_MS
    health = client.get("/v1/jobs").get_json()["items"][0]["health"]
    assert health == "stale"
