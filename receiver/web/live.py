"""The live feed of one web process: one poller thread reads new rows of the outbox (``messages``) and fans
them out to this process's ``GET /v1/stream`` clients (web/stream.py). See docs/architecture.md, "Live updates".

Why a poll: every process that writes messages (thread workers in `serve`, spawned worker processes, Celery
workers, the health alert loop) writes them to the database, which every shape has; one indexed
``SELECT … WHERE id > :last`` per process every ``POLL_SECONDS`` finds them, on SQLite and PostgreSQL
alike, with no broker in the path and no connection held per client. A writer in this process (the same
engine) wakes the poller on commit, so `serve` delivers at once.

Commit order: on PostgreSQL a lower id may commit after a higher one. The poller releases ids in order and
holds back everything above a missing id for up to ``HOLD_SECONDS`` (the writer's transaction is about to
commit; a rolled-back one never will). After that it releases the rest and keeps looking for the missing id
for ``LATE_SECONDS``; one that commits that late is delivered out of order rather than lost. On SQLite writers
are serialized, so ids commit in order and nothing is held.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sqlalchemy import Engine, event, func, or_, select

from receiver.db import outbox
from receiver.db.models import Message
from receiver.services import Services

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # with clients; without, IDLE_POLL_SECONDS keeps the position current
IDLE_POLL_SECONDS = 5.0
HOLD_SECONDS = 2.0
LATE_SECONDS = 60.0
BATCH = 1000
CLIENT_BUFFER = 5000  # messages queued for one slow client before its stream is closed (it resumes by id)
MAX_LATE = 10_000


@dataclass(frozen=True)
class Item:
    id: int
    type: str
    job_id: str | None
    body: str


@dataclass(eq=False)
class Client:
    job_id: str | None
    types: frozenset[str] | None
    registered_upto: int  # every id up to here was released before this client joined
    late_at_join: frozenset[int]  # ids up to registered_upto still awaited: they may come live later
    queue: queue.Queue[Item | None] = field(default_factory=lambda: queue.Queue(CLIENT_BUFFER))
    overflowed: bool = False

    def wants(self, item: Item) -> bool:
        return (self.job_id is None or item.job_id == self.job_id) and (self.types is None or item.type in self.types)


class LiveFeed:
    def __init__(self, engine: Engine, read: Callable[[], Any], clock: Callable[[], float] = time.monotonic,
                 poller: bool = True) -> None:
        self._engine = engine
        self._poller = poller  # False: the caller polls (tests drive ``poll`` and the clock)
        self._read = read  # a connection factory for reads (the read-only engine's connect)
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._clients: set[Client] = set()
        self._next: int | None = None  # the lowest id not yet released
        self._fetched = 0  # the highest id read so far
        self._pending: dict[int, Item] = {}  # read, above a missing id
        self._hole_since: float | None = None
        self._late: dict[int, float] = {}  # missing ids released past -> since when
        self._thread = threading.Thread(target=self._run, name="receiver-live-feed", daemon=True)
        self._started = False
        event.listen(engine, "commit", self._on_commit)
        event.listen(engine, "rollback", self._on_rollback)

    # --- the writer side: wake on commit in this process ---------------------------------------------------

    def _on_commit(self, conn: Any) -> None:
        if conn.info.pop(outbox.WROTE, False):
            self._wake.set()

    def _on_rollback(self, conn: Any) -> None:
        conn.info.pop(outbox.WROTE, None)

    # --- clients ----------------------------------------------------------------------------------------------

    def join(self, job_id: str | None, types: frozenset[str] | None) -> Client:
        self._ensure_started()
        with self._lock:
            upto = (self._next or 1) - 1
            c = Client(job_id, types, upto, frozenset(self._late))
            self._clients.add(c)
        self._wake.set()
        return c

    def leave(self, c: Client) -> None:
        with self._lock:
            self._clients.discard(c)

    def count(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            for c in self._clients:
                _offer(c, None)
            self._clients.clear()
        event.remove(self._engine, "commit", self._on_commit)
        event.remove(self._engine, "rollback", self._on_rollback)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        with self._read() as conn:
            top = conn.execute(select(func.max(Message.id))).scalar_one()
        with self._lock:
            self._next = (top or 0) + 1
            self._fetched = top or 0
        if self._poller:
            self._thread.start()

    # --- the poller -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                log.warning("live feed: reading the outbox failed; trying again", exc_info=True)
            with self._lock:
                idle = not self._clients
            self._wake.wait(IDLE_POLL_SECONDS if idle else POLL_SECONDS)
            self._wake.clear()

    def poll(self) -> None:
        """Read what is new (and any late id still awaited), then release in id order."""
        now = self._clock()
        late = [i for i, since in self._late.items() if now - since <= LATE_SECONDS]
        self._late = {i: self._late[i] for i in late}
        # Awaited: ids below the highest read that have not shown up yet (held back for), and late ones.
        holes = list(islice((i for i in range(self._next or 1, self._fetched) if i not in self._pending), BATCH))
        awaited = holes + late[:BATCH]
        cond = Message.id > self._fetched
        if awaited:
            cond = or_(cond, Message.id.in_(awaited))
        with self._read() as conn:
            rows = conn.execute(select(Message.id, Message.type, Message.job_id, Message.body)
                                .where(cond).order_by(Message.id).limit(BATCH)).all()
        out: list[Item] = []
        for r in rows:
            item = Item(int(r[0]), str(r[1]), r[2], r[3])
            if item.id in self._late:
                del self._late[item.id]
                out.append(item)  # late: out of order rather than lost
            elif item.id >= (self._next or 1):
                self._pending[item.id] = item
                self._fetched = max(self._fetched, item.id)
        with self._lock:
            out += self._release(now)
            for item in out:
                for c in self._clients:
                    if c.wants(item):
                        _offer(c, item)
        if len(rows) == BATCH:
            self._wake.set()  # more waiting: read on at once

    def _release(self, now: float) -> list[Item]:
        out: list[Item] = []
        nxt = self._next or 1
        while self._pending:
            if nxt in self._pending:
                out.append(self._pending.pop(nxt))
                nxt += 1
                self._hole_since = None
                continue
            if self._hole_since is None:
                self._hole_since = now
            if now - self._hole_since < HOLD_SECONDS:
                break
            # Given up waiting: release past the missing ids, but keep looking for them a while.
            lowest = min(self._pending)
            for missing in islice(range(nxt, lowest), max(0, MAX_LATE - len(self._late))):
                self._late[missing] = now
            nxt = lowest
            self._hole_since = None
        if not self._pending:
            nxt = max(nxt, self._fetched + 1)
        self._next = nxt
        return out


def _offer(c: Client, item: Item | None) -> None:
    if c.overflowed and item is not None:
        return  # its stream ends once it has sent what it holds; the client resumes from the database
    try:
        c.queue.put_nowait(item)
    except queue.Full:
        c.overflowed = True


EXTENSION = "receiver.live"


_MAKING = threading.Lock()


def live_feed(svc: Services, extensions: dict[str, Any]) -> LiveFeed:
    """This process's feed for these Services (the app's extensions), made on first use and closed with them."""
    with _MAKING:
        feed = extensions.get(EXTENSION)
        if feed is None:
            feed = extensions[EXTENSION] = LiveFeed(svc.engine, svc.read_engine.connect)
            svc.on_close.insert(0, feed.close)
    assert isinstance(feed, LiveFeed)
    return feed
