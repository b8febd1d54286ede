"""The pipeline end to end: callbacks through HTTP, real SDKs against the fakes, then the read API."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import func, select, update

from receiver.db.models import Event, Snapshot, Thumbnail
from receiver.services import Services, services
from receiver.sim.frames import bad_inputs, make_frame
from receiver.worker.dispatch import drain, wait_idle
from receiver.worker.pipeline import process_event
from tests.support.builders import BUCKET, JOB, OSS_ENDPOINT, build_app, callback_body, put_snapshot

URL = "/callbacks/live-snapshot"
T0 = 1796212805123


def the_event(svc: Services, event_id: str) -> Event:
    with svc.sessions() as s:
        ev = s.get(Event, int(event_id))
        assert ev is not None
        return ev


def snapshot_count(svc: Services) -> int:
    with svc.sessions() as s:
        return s.execute(select(func.count()).select_from(Snapshot)).scalar_one()


def run_until_final(svc: Services, eid: str, timeout: float = 10) -> Event:
    """Drain repeatedly: retries are scheduled in the future, so one pass is not enough."""
    deadline = time.monotonic() + timeout
    while the_event(svc, eid).status not in ("done", "failed", "rejected") and time.monotonic() < deadline:
        drain(svc)
        time.sleep(0.02)
    return the_event(svc, eid)


def send(client, body: bytes) -> str:  # type: ignore[no-untyped-def]
    resp = client.post(URL, data=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["events"][0]


def test_sequence_snapshot_is_indexed_and_served(client, svc, fake_ice, fake_oss, frame):
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    eid = send(client, callback_body(key, T0))
    drain(svc)
    ev = the_event(svc, eid)
    assert ev.status == "done", ev.last_error
    assert ev.attempts == 1 and len(ev.snapshot_ids) == 1
    page = client.get(f"/v1/jobs/{JOB}/snapshots").get_json()
    assert page["next_cursor"] is None
    [snap] = page["items"]
    assert snap["id"] == str(ev.snapshot_ids[0])
    assert snap["captured_at_ms"] == T0 and snap["captured_at"] == "2026-12-02T12:00:05.123Z"
    assert snap["kind"] == "sequence"
    assert snap["source"] == {"endpoint": OSS_ENDPOINT, "bucket": BUCKET, "object": key,
                              "etag": snap["source"]["etag"], "size": len(frame)}
    assert (snap["width"], snap["height"]) == (1920, 1080)
    assert [(t["width"], t["height"], t["format"]) for t in snap["thumbnails"]] == [
        (320, 180, "jpeg"), (160, 90, "jpeg")]
    thumb = client.get(snap["thumbnails"][1]["url"])
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    assert thumb.data[:2] == b"\xff\xd8"
    assert "immutable" in thumb.headers["Cache-Control"]
    again = client.get(snap["thumbnails"][1]["url"], headers={"If-None-Match": thumb.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert client.get(f"/v1/snapshots/{snap['id']}").get_json() == snap
    assert client.get(f"/v1/snapshots/{snap['id']}/thumbnail?width=123").status_code == 400
    # The ICE gateway read the job; OSS served exactly one GET for the frame.
    assert fake_ice.calls("GetLiveSnapshotJob") == 1
    assert [r["method"] for r in fake_oss.fetched(BUCKET, key)] == ["GET"]


def test_captured_at_falls_back_to_the_key_then_last_modified(client, svc, fake_ice, fake_oss, frame):
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    send(client, callback_body(key))  # no CreateTimestamp: the 13-digit {UnixTimestamp} in the key
    fake_oss.put(BUCKET, f"snapshot/{JOB}.jpg", make_frame(seed=2), last_modified=1796212900)
    send(client, callback_body(f"snapshot/{JOB}.jpg"))  # overwrite key: Last-Modified
    drain(svc)
    with svc.sessions() as s:
        got = {r.kind: r.captured_at_ms for r in s.execute(select(Snapshot)).scalars()}
    assert got == {"sequence": T0, "overwrite": 1796212900000}


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"OssBucket": "attacker-bucket"}, "bucket"),
        ({"OssEndpoint": "oss-cn-beijing.aliyuncs.com"}, "endpoint"),
        ({"OssObject": "snapshot/other-job/1796212805123.jpg"}, "does not match"),
        ({"OssObject": f"snapshot/{JOB}/../other-job/1796212805123.jpg"}, ".."),
        ({"OssObject": f"/snapshot/{JOB}/1796212805123.jpg"}, "/"),
        ({"OssObject": "private/secrets.jpg"}, "does not match"),
    ],
)
def test_spoofs_are_rejected_and_nothing_is_fetched(client, svc, fake_ice, fake_oss, frame, override, reason):
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    fake_oss.put(BUCKET, "private/secrets.jpg", frame)
    body = json.loads(callback_body(key, T0))
    body["MessageBody"].update(override)
    eid = send(client, json.dumps(body).encode())
    drain(svc)
    ev = the_event(svc, eid)
    assert ev.status == "rejected"
    assert reason in (ev.last_error or "")
    assert fake_oss.fetched() == []
    assert snapshot_count(svc) == 0


def test_unknown_job_is_rejected_and_negatively_cached(client, svc, fake_ice, fake_oss):
    ids = [send(client, callback_body(f"snapshot/ghost/{T0 + i}.jpg", T0 + i, job="ghost")) for i in range(5)]
    drain(svc)
    for eid in ids:
        ev = the_event(svc, eid)
        assert ev.status == "rejected" and "JobNotFound" in (ev.last_error or "")
    assert fake_ice.calls("GetLiveSnapshotJob") == 1
    assert fake_oss.fetched() == []


def test_job_whose_endpoint_is_not_allowed_is_never_fetched(client, svc, fake_ice, fake_oss, frame):
    fake_ice.add_job("evil-job", bucket=BUCKET, endpoint="169.254.169.254")
    fake_oss.put(BUCKET, f"snapshot/evil-job/{T0}.jpg", frame)
    eid = send(client, callback_body(f"snapshot/evil-job/{T0}.jpg", T0, job="evil-job"))
    drain(svc)
    ev = the_event(svc, eid)
    assert ev.status == "rejected" and "not allowed" in (ev.last_error or "")
    assert fake_oss.fetched() == []


def test_transient_failures_are_retried_to_success(client, svc, fake_ice, fake_oss, frame):
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    fake_ice.fail_next("GetLiveSnapshotJob", 2, "throttle")
    fake_oss.fail_next("GET", 2, status=500)
    eid = send(client, callback_body(key, T0))
    ev = run_until_final(svc, eid)
    assert ev.status == "done", ev.last_error
    assert ev.attempts == 5  # two throttled, two OSS 500s, one success
    assert snapshot_count(svc) == 1


def test_gives_up_after_max_attempts_with_the_reason(client, svc, fake_ice, fake_oss, frame):
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    fake_oss.fail_next("GET", 100, status=503, code="ServiceUnavailable")
    eid = send(client, callback_body(key, T0))
    ev = run_until_final(svc, eid)
    assert ev.status == "failed" and ev.attempts == svc.settings.max_attempts
    assert "gave up" in (ev.last_error or "")


@pytest.mark.parametrize("kind", ["png", "garbage", "truncated", "empty", "bomb"])
def test_bad_images_fail_with_a_reason_and_the_next_frame_succeeds(client, svc, fake_ice, fake_oss, frame, kind):
    bad_key = put_snapshot(fake_oss, fake_ice, T0, bad_inputs()[kind])
    good_key = put_snapshot(fake_oss, fake_ice, T0 + 5000, frame)
    bad = send(client, callback_body(bad_key, T0))
    good = send(client, callback_body(good_key, T0 + 5000))
    drain(svc)
    bad_ev = the_event(svc, bad)
    assert bad_ev.status == "failed"
    assert bad_ev.last_error and len(bad_ev.last_error) > 10
    assert the_event(svc, good).status == "done"
    assert snapshot_count(svc) == 1


def test_too_many_bytes_and_missing_objects_fail(settings, fake_ice, fake_oss, frame):
    app = build_app(settings.with_(max_image_bytes=10_000))
    svc: Services = services(app)
    c = app.test_client()
    big = send(c, callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0))
    missing = send(c, callback_body(f"snapshot/{JOB}/{T0 + 1}.jpg", T0 + 1))
    drain(svc)
    assert the_event(svc, big).status == "failed" and "TooLarge" in (the_event(svc, big).last_error or "")
    gone = the_event(svc, missing)
    assert gone.status == "failed" and "ObjectNotFound" in (gone.last_error or "")
    svc.close()


def test_job_cache_makes_far_fewer_ice_calls_than_callbacks(client, svc, fake_ice, fake_oss, frame):
    for i in range(30):
        send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0 + i * 5000, frame), T0 + i * 5000))
    drain(svc)
    assert snapshot_count(svc) == 30
    assert fake_ice.calls("GetLiveSnapshotJob") == 1


def test_overwrite_mode_one_snapshot_per_etag(client, svc, fake_ice, fake_oss):
    key = f"snapshot/{JOB}.jpg"
    # ICE writes the object and reports the write: Last-Modified agrees with CreateTimestamp (to the second).
    fake_oss.put(BUCKET, key, make_frame(seed=10), last_modified=T0 / 1000)
    send(client, callback_body(key, T0))
    send(client, callback_body(key, T0 + 5000))  # a later write event, same content
    drain(svc)
    assert snapshot_count(svc) == 1
    gets_before = len([r for r in fake_oss.fetched(BUCKET, key) if r["method"] == "GET"])
    assert gets_before == 1  # the second event saw the known ETag with a HEAD, no download
    fake_oss.put(BUCKET, key, make_frame(seed=11), last_modified=(T0 + 10000) / 1000)
    send(client, callback_body(key, T0 + 10000))
    drain(svc)
    with svc.sessions() as s:
        rows = list(s.execute(select(Snapshot).order_by(Snapshot.id)).scalars())
    assert [r.kind for r in rows] == ["overwrite", "overwrite"]
    assert rows[0].etag != rows[1].etag
    assert [r.captured_at_ms for r in rows] == [T0, T0 + 10000]


def test_bare_job_id_callback_resolves_files_from_ice(client, svc, fake_ice, fake_oss, frame):
    now = int(time.time() * 1000)
    for i in range(3):
        put_snapshot(fake_oss, fake_ice, now - 10000 + i * 5000, make_frame(seed=i))
    fake_oss.put(BUCKET, f"snapshot/{JOB}.jpg", frame)
    eid = send(client, json.dumps({"JobId": JOB, "CreateTimestamp": now}).encode())
    drain(svc)
    ev = the_event(svc, eid)
    assert ev.status == "done", ev.last_error
    assert len(ev.snapshot_ids) == 4
    assert fake_ice.calls("ListLiveSnapshotFiles") >= 1


def test_concurrent_processing_of_one_event_indexes_once(client, svc, fake_ice, fake_oss, frame):
    eid = int(send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0)))
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def run() -> None:
        barrier.wait()
        outcomes.append(process_event(svc, eid).status)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["done"] + ["skipped"] * 5
    assert snapshot_count(svc) == 1 and the_event(svc, str(eid)).attempts == 1


def index_now(svc: Services, target_key: str) -> int:
    """What another worker (or a dead process) did: one sequence object indexed in its own transaction."""
    from receiver.worker.index import prepare, write_index
    from receiver.worker.types import Target

    prepared = prepare(svc, svc.ice.get_job(JOB), Target(target_key, "sequence", T0, T0))
    with svc.engine.begin() as conn:
        return write_index(conn, prepared)


def test_restart_mid_processing_loses_and_duplicates_nothing(settings, fake_ice, fake_oss, frame):
    """A worker that dies after indexing but before finishing: the next process finishes the event."""
    app = build_app(settings)
    svc: Services = services(app)
    c = app.test_client()
    keys = [put_snapshot(fake_oss, fake_ice, T0 + i * 5000, make_frame(seed=i)) for i in range(3)]
    ids = [int(send(c, callback_body(k, T0 + i * 5000))) for i, k in enumerate(keys)]
    # Event 0: claimed and fully ingested, then the process died. Event 1: claimed, died before fetching.
    with svc.sessions.begin() as s:
        s.execute(update(Event).where(Event.id.in_(ids[:2])).values(
            status="processing", attempts=1, lease_until=Event.received_at))
    first = index_now(svc, keys[0])
    svc.close()

    app2 = build_app(settings)  # the restarted process
    svc2: Services = services(app2)
    svc2.dispatcher.start()
    assert wait_idle(svc2, timeout=20)
    with svc2.sessions() as s:
        evs = {e.id: e for e in s.execute(select(Event)).scalars()}
        assert {e.status for e in evs.values()} == {"done"}
        assert evs[ids[0]].snapshot_ids == [first]
        assert s.execute(select(func.count()).select_from(Snapshot)).scalar_one() == 3
        assert s.execute(select(func.count()).select_from(Thumbnail)).scalar_one() == 6
    svc2.close()


def test_an_object_indexed_by_someone_else_meanwhile_is_linked_not_duplicated(client, svc, fake_ice, fake_oss,
                                                                             frame, monkeypatch):
    """Between fetching and writing, another worker (or the reconciler) indexed the same object: the event
    links to that row; no second snapshot or thumbnail rows, no error."""
    from receiver.worker import pipeline

    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    eid = int(send(client, callback_body(key, T0)))
    real_prepare = pipeline.prepare

    def prepare_then_race(svc_, job_, target, *claimed):  # type: ignore[no-untyped-def]
        prepared = real_prepare(svc_, job_, target, *claimed)
        # The existence check has passed; the other worker commits first.
        prepare_then_race.other = index_now(svc_, key)  # type: ignore[attr-defined]
        return prepared

    monkeypatch.setattr(pipeline, "prepare", prepare_then_race)
    outcome = process_event(svc, eid)
    assert outcome.status == "done" and outcome.snapshot_ids == (prepare_then_race.other,)  # type: ignore[attr-defined]
    assert snapshot_count(svc) == 1
    with svc.sessions() as s:
        assert s.execute(select(func.count()).select_from(Thumbnail)).scalar_one() == 2
    assert the_event(svc, str(eid)).snapshot_ids == [prepare_then_race.other]  # type: ignore[attr-defined]


def test_a_claim_lost_while_working_keeps_the_rows_and_leaves_the_event_to_its_new_owner(client, svc, fake_ice,
                                                                                           fake_oss, frame,
                                                                                           monkeypatch):
    from receiver.worker import pipeline

    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    eid = int(send(client, callback_body(key, T0)))
    real_prepare = pipeline.prepare

    def prepare_then_lose_claim(svc_, job_, target, *claimed):  # type: ignore[no-untyped-def]
        prepared = real_prepare(svc_, job_, target, *claimed)
        with svc.sessions.begin() as s:  # the lease ran out and another worker claimed the event
            s.execute(update(Event).where(Event.id == eid).values(attempts=Event.attempts + 1))
        return prepared

    monkeypatch.setattr(pipeline, "prepare", prepare_then_lose_claim)
    process_event(svc, eid)
    ev = the_event(svc, str(eid))
    assert ev.status == "processing" and ev.attempts == 2 and ev.snapshot_ids == []
    assert snapshot_count(svc) == 1  # the new owner will find it and link it


def test_threaded_dispatcher_processes_a_burst(client, svc, fake_ice, fake_oss, frame):
    svc.dispatcher.start()
    for i in range(20):
        send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0 + i * 5000, frame), T0 + i * 5000))
    assert wait_idle(svc, timeout=30)
    assert snapshot_count(svc) == 20
    page = client.get(f"/v1/jobs/{JOB}/snapshots?limit=7&order=asc").get_json()
    assert [i["captured_at_ms"] for i in page["items"]] == [T0 + i * 5000 for i in range(7)]
    assert page["next_cursor"]


def test_sources_narrower_than_the_configured_widths_are_served(client, svc, fake_ice, fake_oss):
    """A 200 px source (between 160 and 320) and a 100 px one (below both) are not upscaled; every URL in
    the JSON still answers with an image."""
    keys = [put_snapshot(fake_oss, fake_ice, T0 + i, make_frame(seed=i, width=w, height=w * 9 // 16))
            for i, w in enumerate((200, 100))]
    ids = [send(client, callback_body(k, T0 + i)) for i, k in enumerate(keys)]
    drain(svc)
    assert [the_event(svc, e).status for e in ids] == ["done", "done"]
    got = {}
    for item in client.get(f"/v1/jobs/{JOB}/snapshots?order=asc").get_json()["items"]:
        got[item["width"]] = [(t["width"], t["url"].split("width=")[1]) for t in item["thumbnails"]]
        for t in item["thumbnails"]:
            resp = client.get(t["url"])
            assert resp.status_code == 200 and resp.data[:2] == b"\xff\xd8"
    assert got == {200: [(200, "320"), (160, "160")], 100: [(100, "160")]}


def test_bare_job_id_callback_survives_a_missing_overwrite_object(client, svc, fake_ice, fake_oss, frame):
    now = int(time.time() * 1000)
    put_snapshot(fake_oss, fake_ice, now - 5000, frame)  # a sequence file, but no overwrite object yet
    eid = send(client, json.dumps({"JobId": JOB, "CreateTimestamp": now}).encode())
    drain(svc)
    ev = the_event(svc, eid)
    assert ev.status == "done", ev.last_error
    assert len(ev.snapshot_ids) == 1


def test_bare_job_id_callback_keeps_the_overwrite_frame_when_a_sequence_file_fails_transiently(client, svc,
                                                                                                 fake_ice, fake_oss,
                                                                                                 frame):
    """The event is retried for the sequence file, but the overwrite object's content, fetched already and
    rewritten by ICE before the retry, is indexed at once rather than dropped with the attempt."""
    now = int(time.time() * 1000)
    fake_oss.put(BUCKET, f"snapshot/{JOB}.jpg", make_frame(seed=7))  # the overwrite object (OverwriteFormat)
    seq = put_snapshot(fake_oss, fake_ice, now - 5000, frame)
    fake_oss.fail_next("GET", 1, status=503, code="ServiceUnavailable", key=seq)
    eid = send(client, json.dumps({"JobId": JOB, "CreateTimestamp": now}).encode())
    assert process_event(svc, int(eid)).status == "pending"  # retried for the sequence file
    with svc.sessions() as s:
        assert s.execute(select(Snapshot.oss_object)).scalars().all() == [f"snapshot/{JOB}.jpg"]
    assert run_until_final(svc, eid).status == "done"
    with svc.sessions() as s:
        assert sorted(s.execute(select(Snapshot.oss_object)).scalars().all()) == sorted([f"snapshot/{JOB}.jpg", seq])
    assert len(the_event(svc, eid).snapshot_ids) == 2


def test_overwrite_fetched_late_takes_the_objects_own_time(client, svc, fake_oss):
    key = f"snapshot/{JOB}.jpg"
    fake_oss.put(BUCKET, key, make_frame(seed=20), last_modified=(T0 + 60_000) / 1000)
    send(client, callback_body(key, T0))  # the event is a minute older than the bytes now in the object
    drain(svc)
    with svc.sessions() as s:
        assert s.execute(select(Snapshot.captured_at_ms)).scalar_one() == (T0 + 60_000) // 1000 * 1000


def test_an_event_that_keeps_killing_its_worker_is_given_up(client, svc, fake_ice, fake_oss, frame):
    eid = int(send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0)))
    with svc.sessions.begin() as s:  # every earlier attempt died holding the lease
        s.execute(update(Event).where(Event.id == eid).values(
            status="processing", attempts=svc.settings.max_attempts, lease_until=Event.received_at))
    assert process_event(svc, eid).status == "failed"
    ev = the_event(svc, str(eid))
    assert ev.status == "failed" and "never finished" in (ev.last_error or "")
    assert snapshot_count(svc) == 0


def test_process_worker_pool_indexes_each_snapshot_once(settings, fake_ice, fake_oss):
    """RECEIVER_WORKER_POOL=process: the same scheduler and sweeper, process_event in spawned processes."""
    app = build_app(settings.with_(worker_pool="process", workers=2))
    svc: Services = services(app)
    c = app.test_client()
    small = make_frame(seed=4, width=320, height=180)
    ids = [send(c, callback_body(put_snapshot(fake_oss, fake_ice, T0 + i * 5000, small), T0 + i * 5000))
           for i in range(12)]
    svc.dispatcher.start()
    try:
        # Both children are started (and so initialised) at start, not by the first events.
        for f in svc.dispatcher.warming:
            f.result(timeout=60)
        assert len(svc.dispatcher._executor._processes) == 2
        assert wait_idle(svc, timeout=60)
    finally:
        svc.close()
    assert {the_event(svc, e).status for e in ids} == {"done"}
    assert snapshot_count(svc) == 12
    assert len([r for r in fake_oss.fetched() if r["method"] == "GET"]) == 12


def test_a_callbacks_time_is_only_a_hint(client, svc, fake_ice, fake_oss, frame):
    """captured_at from a callback body is used only when it agrees with the object's Last-Modified."""
    now = int(time.time() * 1000)
    believed = put_snapshot(fake_oss, fake_ice, now - 1500, frame)  # key ts differs from CreateTimestamp
    forged = put_snapshot(fake_oss, fake_ice, now - 800, make_frame(seed=5))
    send(client, callback_body(believed, now - 700))  # plausible: within minutes of Last-Modified
    send(client, callback_body(forged, 946684800000))  # the year 2000: ignored, the key's time is used
    drain(svc)
    with svc.sessions() as s:
        got = dict(s.execute(select(Snapshot.oss_object, Snapshot.captured_at_ms)).all())
    assert got == {believed: now - 700, forged: now - 800}


def test_bare_job_id_with_nothing_listed_fails_with_the_real_reason(client, svc, fake_ice):
    fake_ice.add_job("seq-only", bucket=BUCKET, endpoint=OSS_ENDPOINT, overwrite_format="")
    eid = send(client, json.dumps({"JobId": "seq-only"}).encode())
    drain(svc)
    ev = the_event(svc, eid)
    assert ev.status == "failed" and "no file" in (ev.last_error or "")


# --- leases: a heartbeat while working, and a restarted process taking back orphaned claims (worker/heartbeat.py)


def test_a_slow_download_keeps_its_claim_while_its_worker_lives(client, svc, settings, fake_ice, fake_oss, frame):
    """The lease is short and the download outlasts it several times: the heartbeat renews the claim, so a
    second worker trying all along never takes the event, and the object is fetched once."""
    svc.settings = svc.settings.with_(lease_seconds=0.3)
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    eid = int(send(client, callback_body(key, T0)))
    other = build_app(settings.with_(lease_seconds=0.3))  # another worker on the same database
    outcome: list[object] = []
    fake_oss.latency = 1.2  # four leases
    try:
        working = threading.Thread(target=lambda: outcome.append(process_event(svc, eid).status))
        working.start()
        while the_event(svc, str(eid)).status != "processing":  # claimed: now inside the slow GET
            time.sleep(0.01)
        tries = 0
        while working.is_alive():
            assert process_event(services(other), eid).status == "skipped"
            tries += 1
            time.sleep(0.05)
        working.join()
    finally:
        fake_oss.latency = 0.0
        services(other).close()
    assert outcome == ["done"] and tries >= 5
    ev = the_event(svc, str(eid))
    assert ev.status == "done" and ev.attempts == 1
    assert len([r for r in fake_oss.fetched(BUCKET, key) if r["method"] == "GET"]) == 1


def test_the_heartbeat_renews_only_claims_still_held(client, svc, fake_ice, fake_oss, frame):
    import datetime as dt

    from receiver.db.models import utcnow
    from receiver.worker.heartbeat import renew

    ids = [int(send(client, callback_body(put_snapshot(fake_oss, fake_ice, T0 + i * 5000, frame), T0 + i * 5000)))
           for i in range(3)]
    past = utcnow() - dt.timedelta(seconds=1)
    with svc.sessions.begin() as s:
        s.execute(update(Event).where(Event.id.in_(ids[:2])).values(status="processing", attempts=2, lease_until=past))
    # ids[0]: still ours (attempt 2). ids[1]: claimed again by someone else (we hold attempt 1). ids[2]: pending.
    assert renew(svc.engine, {ids[0]: 2, ids[1]: 1, ids[2]: 0}, 60) == 1
    leases = {e: the_event(svc, str(e)).lease_until for e in ids}
    assert leases[ids[0]] is not None and leases[ids[0]].replace(tzinfo=None) > utcnow().replace(tzinfo=None)
    assert leases[ids[1]] is not None and leases[ids[1]].replace(tzinfo=None) <= utcnow().replace(tzinfo=None)
    assert leases[ids[2]] is None
    assert renew(svc.engine, {}, 60) == 0


def test_a_restarted_process_takes_back_orphaned_claims_unless_another_worker_lives(settings, fake_ice, fake_oss,
                                                                                    frame):
    """SQLite: claims left `processing` by a dead run are taken back at start, not after their leases; while
    another process that may claim lives (it holds the shared lock), they are left to their leases."""
    import datetime as dt
    import fcntl

    from receiver.db.models import utcnow
    from receiver.worker import heartbeat

    app = build_app(settings)
    svc: Services = services(app)
    try:
        c = app.test_client()
        ids = [int(send(c, callback_body(put_snapshot(fake_oss, fake_ice, T0 + i * 5000, make_frame(seed=i)),
                                         T0 + i * 5000))) for i in range(2)]
        with svc.sessions.begin() as s:  # a run that died a moment ago: fresh leases, nobody renewing them
            s.execute(update(Event).where(Event.id.in_(ids)).values(
                status="processing", attempts=1, lease_until=utcnow() + dt.timedelta(seconds=600)))
        path = heartbeat._lock_path(svc)
        assert path is not None
        with open(path, "ab") as live_worker:  # e.g. a `receiver worker` on the same file
            fcntl.flock(live_worker.fileno(), fcntl.LOCK_SH)
            assert heartbeat.reclaim_orphans(svc, wait=0.1) == 0
        assert {the_event(svc, str(e)).status for e in ids} == {"processing"}
        svc.dispatcher.start()  # the worker is gone: the start takes both back, the first sweep runs them
        assert wait_idle(svc, timeout=20)
        assert {(the_event(svc, str(e)).status, the_event(svc, str(e)).attempts) for e in ids} == {("done", 2)}
        assert heartbeat.reclaim_orphans(svc) == 0  # this process claims now: its own claims are live
    finally:
        svc.close()


def test_the_pre_fetch_probe_reads_a_day_either_side_of_the_expected_capture_time(client, svc, fake_ice,
                                                                                    fake_oss, frame):
    """The probe that skips fetching an indexed object reads a day either side of the time it expects the row
    at (on PostgreSQL: three day partitions, not a year's). For a sequence object that is the key's own
    timestamp, so a callback whose time is days off still finds it without fetching."""
    from receiver.worker.index import IDENTITY_WINDOW_MS, _existing

    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    first = int(send(client, callback_body(key, T0)))
    drain(svc)
    [sid] = the_event(svc, str(first)).snapshot_ids
    assert _existing(svc, JOB, BUCKET, key, None, T0 + IDENTITY_WINDOW_MS) == (sid, T0)  # with its partition key
    assert _existing(svc, JOB, BUCKET, key, None, T0 + IDENTITY_WINDOW_MS + 1) is None  # outside the window
    assert _existing(svc, JOB, BUCKET, key, None) == (sid, T0)  # no time known: every partition

    def gets() -> int:
        return sum(1 for r in fake_oss.requests if r["method"] == "GET" and r["key"] == key)

    fetched = gets()
    late = int(send(client, callback_body(key, T0 + 3 * 86_400_000)))  # a callback time three days off
    drain(svc)
    assert gets() == fetched  # found before fetching: the key's timestamp placed the probe
    assert the_event(svc, str(late)).snapshot_ids == [sid] and snapshot_count(svc) == 1
