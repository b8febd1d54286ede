"""When the probe the claim carries on PostgreSQL settles "is this object indexed already?" (index._probed),
and when the pre-fetch SELECT must still run: the claim reads two days either side of the callback's time,
the SELECT a day either side of the key's time (else the callback's)."""

from __future__ import annotations

import datetime as dt

import pytest

from receiver.adapters.base import JobInfo
from receiver.db.models import EventOrigin
from receiver.worker.index import IDENTITY_WINDOW_MS, _probed
from receiver.worker.types import Claimed, Target

T0 = 1796212805123
DAY = IDENTITY_WINDOW_MS
KEY = f"snapshot/job-1/{T0}.jpg"
JOB = JobInfo("job-1", None, None, None, "oss-cn-shanghai.aliyuncs.com", "bucket", None,
              "snapshot/{JobId}/{UnixTimestamp}.jpg", 5, None, None)


def claimed(row: tuple[int, int] | None = None, *, probed: bool = True, bucket: str | None = "bucket",
            create: int | None = T0, key: str | None = KEY) -> Claimed:
    return Claimed(1, 1, "job-1", EventOrigin.CALLBACK, False, key, bucket, None, create, None,
                   dt.datetime.now(dt.UTC), probed=probed, probed_row=row)


def target(key_ts: int | None = T0, create: int | None = T0, key: str = KEY) -> Target:
    return Target(key, "sequence", create, key_ts)


def test_a_row_near_the_keys_time_is_the_answer() -> None:
    assert _probed(claimed((7, T0 + 1000)), JOB, target()) == (True, (7, T0 + 1000))
    assert _probed(claimed((7, T0 - DAY)), JOB, target()) == (True, (7, T0 - DAY))  # the window's edge


def test_nothing_there_settles_it_when_the_claims_window_covers_the_selects() -> None:
    assert _probed(claimed(None), JOB, target()) == (True, None)
    assert _probed(claimed(None), JOB, target(key_ts=T0 + DAY)) == (True, None)  # [T0, T0+2d] inside [T0-2d, T0+2d]


@pytest.mark.parametrize(("ev", "t", "why"), [
    (claimed((7, T0 + DAY + 1)), target(), "a row further off proves nothing about the SELECT's window"),
    (claimed((7, T0 - 2 * DAY)), target(), "(a key without a timestamp may be written again days later)"),
    (claimed(None), target(key_ts=T0 + DAY + 1), "the key's time a day off: the windows differ"),
    (claimed(None), target(key_ts=None, create=None), "no time to centre the SELECT's window on"),
    (claimed(None, probed=False), target(), "SQLite: the claim asked nothing"),
    (claimed(None, bucket=None), target(), "a callback without a bucket: the claim matched no row"),
    (claimed(None, create=None), target(), "a callback without a time: the claim read no window"),
    (claimed(None, key=None), target(), "a bare-JobId callback: the targets are not the event's own key"),
    (claimed(None), target(key=f"snapshot/job-1/{T0 + 5000}.jpg"), "another object than the event's"),
])
def test_the_select_still_runs(ev: Claimed, t: Target, why: str) -> None:
    assert _probed(ev, JOB, t) == (False, None), why


def test_none_of_it_without_a_claimed_event() -> None:
    assert _probed(None, JOB, target()) == (False, None)
