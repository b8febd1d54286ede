"""The live feed's reading of the outbox (web/live.py) when ids commit out of order, as on PostgreSQL: held
back in order for a moment, then released past the missing id, which is still delivered if it commits late."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import insert

from receiver.db.models import Message
from receiver.services import Services
from receiver.web import live
from receiver.web.live import LiveFeed


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def put(svc: Services, *ids: int) -> None:
    with svc.engine.begin() as conn:
        conn.execute(insert(Message), [{"id": i, "message_id": f"msg_{i:032x}", "type": "event.failed",
                                        "job_id": "j", "account": None, "body": f'{{"n":{i}}}',
                                        "created_at": dt.datetime.now(dt.UTC), "fanned_out": False} for i in ids])


def drained(c: live.Client) -> list[int]:
    out = []
    while not c.queue.empty():
        item = c.queue.get_nowait()
        assert item is not None
        out.append(item.id)
    return out


def test_ids_are_released_in_order_and_a_late_commit_is_still_delivered(svc):
    put(svc, 1)
    clock = Clock()
    feed = LiveFeed(svc.engine, svc.read_engine.connect, clock=clock, poller=False)
    try:
        c = feed.join(None, None)
        assert c.registered_upto == 1  # what existed before it joined is not live news
        put(svc, 2, 4, 5)  # 3 is "in flight": taken by a transaction that has not committed
        feed.poll()
        assert drained(c) == [2]
        clock.t += live.HOLD_SECONDS / 2
        feed.poll()
        assert drained(c) == []  # 4 and 5 wait for 3 a moment
        put(svc, 3)
        feed.poll()
        assert drained(c) == [3, 4, 5]

        put(svc, 7)  # 6 never commits (rolled back)
        feed.poll()
        assert drained(c) == []
        clock.t += live.HOLD_SECONDS
        feed.poll()
        assert drained(c) == [7]  # given up waiting for 6
        put(svc, 8)
        feed.poll()
        assert drained(c) == [8]
        put(svc, 6)  # ... which commits after all, within LATE_SECONDS: delivered out of order, not lost
        feed.poll()
        assert drained(c) == [6]
        feed.poll()
        assert drained(c) == []

        # A client joining now starts after everything released, and knows nothing is awaited.
        late_joiner = feed.join(None, None)
        assert late_joiner.registered_upto == 8 and late_joiner.late_at_join == frozenset()
    finally:
        feed.close()


def test_a_missing_id_is_forgotten_after_late_seconds(svc):
    put(svc, 1)
    clock = Clock()
    feed = LiveFeed(svc.engine, svc.read_engine.connect, clock=clock, poller=False)
    try:
        c = feed.join(None, None)
        put(svc, 3)
        feed.poll()
        clock.t += live.HOLD_SECONDS
        feed.poll()
        assert drained(c) == [3]
        assert feed.join(None, None).late_at_join == frozenset({2})
        clock.t += live.LATE_SECONDS + 1
        feed.poll()
        put(svc, 2)
        feed.poll()
        assert drained(c) == []
    finally:
        feed.close()


def test_a_client_that_falls_too_far_behind_is_marked_and_gets_nothing_more(svc, monkeypatch):
    monkeypatch.setattr(live, "CLIENT_BUFFER", 2)
    feed = LiveFeed(svc.engine, svc.read_engine.connect, poller=False)
    try:
        c = feed.join(None, None)
        put(svc, 1, 2, 3, 4)
        feed.poll()
        assert c.overflowed and drained(c) == [1, 2]
        put(svc, 5)
        feed.poll()
        assert drained(c) == []
    finally:
        feed.close()
