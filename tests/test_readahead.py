"""receiver.readahead: objects fetched ahead for the thread pool are used once, and only when safe."""

from __future__ import annotations

import time

from sqlalchemy import update

from receiver.dispatch import wait_idle
from receiver.models import Event
from receiver.pipeline import process_event

from .conftest import BUCKET, JOB, callback_body, put_snapshot
from .test_pipeline import T0, send, snapshot_count, the_event


def gets(fake_oss, key: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [r["status"] for r in fake_oss.fetched(BUCKET, key) if r["method"] == "GET"]


def wait_for_gets(fake_oss, key: str, n: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while len(gets(fake_oss, key)) < n:
        assert time.monotonic() < deadline, f"no read-ahead GET of {key}"
        time.sleep(0.01)


def test_an_object_read_ahead_is_used_instead_of_a_second_get(client, svc, fake_ice, fake_oss, frame):
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    eid = int(send(client, callback_body(key, T0)))
    assert svc.readahead is not None  # the thread pool's (the dispatcher is built but not started)
    svc.readahead.start(eid)
    wait_for_gets(fake_oss, key, 1)
    outcome = process_event(svc, eid)
    assert outcome.status == "done" and snapshot_count(svc) == 1
    assert gets(fake_oss, key) == [200]  # the worker took the object; OSS served it once


def test_only_first_attempts_of_allowed_sequence_objects_are_read_ahead(client, svc, fake_ice, fake_oss, frame):
    retried = put_snapshot(fake_oss, fake_ice, T0, frame)
    retried_id = int(send(client, callback_body(retried, T0)))
    with svc.sessions.begin() as s:  # an earlier attempt failed: the object may have changed meanwhile
        s.execute(update(Event).where(Event.id == retried_id).values(attempts=1))
    fake_ice.add_job("evil-job", bucket=BUCKET, endpoint="169.254.169.254")
    evil = f"snapshot/evil-job/{T0}.jpg"
    fake_oss.put(BUCKET, evil, frame)
    evil_id = int(send(client, callback_body(evil, T0, job="evil-job")))
    bare_id = int(send(client, callback_body(None, T0)))  # names no object: resolving it means listing files
    fake_oss.put(BUCKET, f"snapshot/{JOB}.jpg", frame)  # the job's OverwriteFormat: rewritten in place
    overwrite_id = int(send(client, callback_body(f"snapshot/{JOB}.jpg", T0)))
    assert svc.readahead is not None
    for eid in (retried_id, evil_id, bare_id, overwrite_id, 999_999):
        svc.readahead.start(eid)
    svc.readahead.close()  # waits for whatever it started
    assert fake_oss.fetched() == []
    assert fake_ice.calls("ListLiveSnapshotFiles") == 0


def test_a_failed_read_ahead_is_a_miss_not_an_error(client, svc, fake_ice, fake_oss, frame):
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    eid = int(send(client, callback_body(key, T0)))
    fake_oss.fail_next("GET", 1, key=key)
    assert svc.readahead is not None
    svc.readahead.start(eid)
    wait_for_gets(fake_oss, key, 1)
    assert process_event(svc, eid).status == "done"
    ev = the_event(svc, str(eid))
    assert ev.attempts == 1 and ev.last_error is None  # the worker's own GET ran and succeeded
    assert gets(fake_oss, key) == [500, 200]


def test_held_objects_are_bounded_and_the_oldest_goes_first(client, svc, fake_ice, fake_oss, frame):
    assert svc.readahead is not None
    keys, ids = [], []
    for i in range(svc.readahead.capacity + 1):
        keys.append(put_snapshot(fake_oss, fake_ice, T0 + i, frame))
        ids.append(int(send(client, callback_body(keys[-1], T0 + i))))
    for eid, key in zip(ids, keys, strict=True):
        svc.readahead.start(eid)
        wait_for_gets(fake_oss, key, 1)
    for eid in ids:
        assert process_event(svc, eid).status == "done"
    # The first object was dropped to make room; its worker fetched it again. The others were used.
    assert [len(gets(fake_oss, k)) for k in keys] == [2] + [1] * svc.readahead.capacity


def test_the_thread_pool_fetches_each_object_once(client, svc, fake_ice, fake_oss, frame):
    svc.dispatcher.start()
    keys = [put_snapshot(fake_oss, fake_ice, T0 + i * 5000, frame) for i in range(24)]
    for i, key in enumerate(keys):
        send(client, callback_body(key, T0 + i * 5000))
    assert wait_idle(svc, timeout=30)
    assert snapshot_count(svc) == 24
    assert [gets(fake_oss, k) for k in keys] == [[200]] * 24
