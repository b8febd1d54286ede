"""Issue 14 item 3, the worker half: the events of one job in one batch share one verification and one listing.

One callback of thousands of bare-JobId `FileList` items made one ListLiveSnapshotFiles call (or up to 20
pages) per item. Now the window each event lists is on a grid and the pages are shared by every event whose
callback arrived before the answer was sent (CachedIceGateway.list_files_shared), so a batch costs a few
calls; a callback arriving later still gets a fresh listing. Counted in the fake ICE's request log.
"""

from __future__ import annotations

import json
import threading
import time

from sqlalchemy import func, select

from receiver.db.models import Event, Snapshot
from receiver.services import Services
from receiver.worker.dispatch import drain
from tests.support.builders import JOB, put_snapshot

FILES = 30
CALLBACKS = 3
ITEMS = 60  # per callback (under the intake's per-callback cap)


def _bare_batch(times: list[int]) -> bytes:
    return json.dumps({"EventType": "LiveSnapshotComplete",
                       "MessageBody": {"JobId": JOB, "FileList": [{"CreateTimestamp": t} for t in times]}}).encode()


def _snapshots(svc: Services) -> tuple[int, int]:
    with svc.sessions() as s:
        return (s.scalar(select(func.count()).select_from(Snapshot)) or 0,
                s.scalar(select(func.count(func.distinct(Snapshot.oss_object)))) or 0)


def _statuses(svc: Services) -> dict[str, int]:
    with svc.sessions() as s:
        return dict(s.execute(select(Event.status, func.count()).group_by(Event.status)).all())  # type: ignore[arg-type]


def _drain_concurrently(svc: Services, threads: int = 4) -> None:
    # Several workers at once, as the thread pool runs them: verification and listings must single-flight.
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        drain(svc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    drain(svc)  # anything a concurrent claim left due


def test_bare_job_id_events_of_one_batch_share_one_verification_and_one_listing(client, svc, fake_ice, fake_oss,
                                                                                 frame):
    now = int(time.time() * 1000)
    keys = [put_snapshot(fake_oss, fake_ice, now - 45_000 + i * 1500, frame) for i in range(FILES)]
    # Many bare-JobId events (each item its own moment, so each its own event), recorded before any is run.
    for c in range(CALLBACKS):
        times = [now - 40_000 + (c * ITEMS + i) * 200 for i in range(ITEMS)]
        resp = client.post("/callbacks/live-snapshot", data=_bare_batch(times))
        assert resp.status_code == 200, resp.get_data(as_text=True)
    assert sum(_statuses(svc).values()) == CALLBACKS * ITEMS
    lists_before = fake_ice.calls("ListLiveSnapshotFiles")

    _drain_concurrently(svc)

    assert _statuses(svc) == {"done": CALLBACKS * ITEMS}
    assert _snapshots(svc) == (FILES, FILES)  # every listed file indexed, once
    assert fake_ice.calls("GetLiveSnapshotJob") == 1
    # The moments span 40 s: at most the two or three grid windows they fall in, one page each (30 files).
    lists = fake_ice.calls("ListLiveSnapshotFiles") - lists_before
    assert 1 <= lists <= 3, lists
    with svc.sessions() as s:
        indexed = set(s.scalars(select(Snapshot.oss_object)))
    assert indexed == set(keys)


def test_a_callback_after_the_shared_listing_still_gets_a_fresh_one(client, svc, fake_ice, fake_oss, frame):
    now = int(time.time() * 1000)
    put_snapshot(fake_oss, fake_ice, now - 10_000, frame)
    assert client.post("/callbacks/live-snapshot", data=_bare_batch([now - 10_000])).status_code == 200
    drain(svc)
    assert _snapshots(svc) == (1, 1)
    lists = fake_ice.calls("ListLiveSnapshotFiles")
    # A new file, then its callback: the answer kept from before it cannot hold it, so ICE is asked again.
    time.sleep(0.01)
    put_snapshot(fake_oss, fake_ice, now - 9_000, frame)
    assert client.post("/callbacks/live-snapshot", data=_bare_batch([now - 9_000])).status_code == 200
    drain(svc)
    assert _statuses(svc) == {"done": 2}
    assert _snapshots(svc) == (2, 2)
    assert fake_ice.calls("ListLiveSnapshotFiles") == lists + 1
    assert fake_ice.calls("GetLiveSnapshotJob") == 1
