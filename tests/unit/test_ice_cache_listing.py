"""CachedIceGateway.list_files_shared (issue 14 item 3), pure: a fake inner gateway, no sockets.

One upstream call for concurrent identical requests; an answer is reused only when it was sent at or after
the time the caller names (its callback's arrival); errors are not kept; the window grid of worker/resolve.py
puts the moments of one batch in the same window."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from receiver.adapters.base import FilesPage, SnapshotFile
from receiver.adapters.ice_cache import CachedIceGateway
from receiver.exceptions import Transient
from receiver.worker.resolve import SEQUENCE_WINDOW_GRID_S, sequence_window


class SlowLister:
    def __init__(self, delay: float = 0.05) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.delay = delay
        self.fail = 0
        self._lock = threading.Lock()

    def list_files(self, job_id: str, start_time: str, end_time: str, limit: int = 100,
                   sort_by: str = "asc") -> FilesPage:
        with self._lock:
            self.calls.append((job_id, start_time, end_time, limit, sort_by))
            failing = self.fail > 0
            self.fail -= failing
        time.sleep(self.delay)
        if failing:
            raise Transient("throttled")
        f = SnapshotFile(job_id, "e", "b", f"snapshot/{job_id}/1.jpg", None, 1, False)
        return FilesPage([f], None)


class Clock:
    def __init__(self) -> None:
        self.mono, self.wall = 100.0, 1_000_000

    def monotonic(self) -> float:
        return self.mono

    def wall_ms(self) -> int:
        return self.wall


def gateway(inner: SlowLister, clock: Clock | None = None, ttl: float = 30.0) -> CachedIceGateway:
    if clock is None:
        return CachedIceGateway(inner, listing_ttl=ttl)  # type: ignore[arg-type]
    return CachedIceGateway(inner, listing_ttl=ttl, clock=clock.monotonic, wall_ms=clock.wall_ms)  # type: ignore[arg-type]


def test_concurrent_identical_requests_share_one_call():
    inner = SlowLister()
    gw = gateway(inner)
    before = int(time.time() * 1000) - 1000
    barrier = threading.Barrier(16)
    pages: list[FilesPage] = []

    def ask() -> None:
        barrier.wait()
        pages.append(gw.list_files_shared("j", "s", "e", fetched_after_ms=before))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(inner.calls) == 1 and len(pages) == 16 and all(p is pages[0] for p in pages)
    # Later askers of the batch get the kept answer; another window or job is another question.
    assert gw.list_files_shared("j", "s", "e", fetched_after_ms=before) is pages[0]
    gw.list_files_shared("j", "s", "e2", fetched_after_ms=before)
    gw.list_files_shared("k", "s", "e", fetched_after_ms=before)
    assert len(inner.calls) == 3


def test_an_answer_sent_before_the_callers_callback_is_not_reused():
    inner, clock = SlowLister(0), Clock()
    gw = gateway(inner, clock)
    gw.list_files_shared("j", "s", "e", fetched_after_ms=clock.wall - 10)
    assert gw.list_files_shared("j", "s", "e", fetched_after_ms=clock.wall) is not None  # sent at that ms
    assert len(inner.calls) == 1
    clock.wall += 500
    gw.list_files_shared("j", "s", "e", fetched_after_ms=clock.wall - 1)  # its callback came after the answer
    assert len(inner.calls) == 2
    gw.list_files_shared("j", "s", "e", fetched_after_ms=clock.wall - 100)  # the newer answer serves the older
    assert len(inner.calls) == 2


def test_answers_expire_and_errors_are_not_kept():
    inner, clock = SlowLister(0), Clock()
    gw = gateway(inner, clock, ttl=30)
    inner.fail = 1
    with pytest.raises(Transient):
        gw.list_files_shared("j", "s", "e", fetched_after_ms=0)
    gw.list_files_shared("j", "s", "e", fetched_after_ms=0)
    gw.list_files_shared("j", "s", "e", fetched_after_ms=0)
    assert len(inner.calls) == 2
    clock.mono += 31
    gw.list_files_shared("j", "s", "e", fetched_after_ms=0)
    assert len(inner.calls) == 3
    no_keep = gateway(SlowLister(0), clock, ttl=0)
    no_keep.list_files_shared("j", "s", "e", fetched_after_ms=0)
    no_keep.list_files_shared("j", "s", "e", fetched_after_ms=0)
    assert len(no_keep.inner.calls) == 2  # type: ignore[attr-defined]


def test_waiters_share_the_leaders_error():
    inner = SlowLister(0.05)
    inner.fail = 1
    gw = gateway(inner)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def ask() -> None:
        barrier.wait()
        try:
            gw.list_files_shared("j", "s", "e", fetched_after_ms=0)
        except Transient as e:
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(inner.calls) == 1 and len(errors) == 8


def test_the_window_covers_the_moment_on_a_grid_so_a_batch_shares_it():
    grid = SEQUENCE_WINDOW_GRID_S * 1000
    m = 1_796_212_805_123
    start, end = sequence_window(m, 5)
    assert start % grid == 0 and end % grid == 0
    assert start <= m - 60_000 and end >= m + 60_000 and end - start <= 120_000 + 2 * grid
    assert sequence_window(m, 60)[0] <= m - 180_000  # three intervals of a slow job
    # Moments within one grid cell share a window: the events of a burst ask ICE one question.
    cell = m // grid * grid
    for interval in (5, 25, 60):
        assert len({sequence_window(cell + d, interval) for d in range(0, grid, 997)}) == 1, interval
    for moment in range(m - 200_000, m + 200_000, 7919):
        for interval in (1, 5, 25, 60, 600):
            start, end = sequence_window(moment, interval)
            assert start <= moment - max(3 * interval, 60) * 1000 and end >= moment + 60_000
