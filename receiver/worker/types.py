"""The values that pass between the worker's stages: a claimed event, its targets, prepared rows, the outcome."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from receiver.db.models import EventOrigin, EventStatus

Skipped = Literal["skipped"]
SKIPPED: Skipped = "skipped"


@dataclass(frozen=True)
class Outcome:
    status: EventStatus | Skipped  # pending: a retry is scheduled; skipped: not ours to run (claimed elsewhere)
    retry_in: float | None = None
    snapshot_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Claimed:
    id: int
    attempts: int
    job_id: str
    origin: EventOrigin
    key_from_ice: bool
    oss_object: str | None
    oss_bucket: str | None
    oss_endpoint: str | None
    create_timestamp_ms: int | None
    is_overlay: bool | None
    received_at: dt.datetime
    account: str = "default"
    user_id: str | None = None
    # The pre-fetch probe asked in the claim's own statement on PostgreSQL (pipeline._claim_statement): whether it
    # was asked, and (id, captured_at_ms) of a row for the callback's object within PROBE_WINDOW_MS of its
    # time, if any. Last: not Event columns.
    probed: bool = False
    probed_row: tuple[int, int] | None = None


@dataclass(frozen=True)
class Target:
    key: str
    kind: str  # overwrite | sequence
    create_ts_ms: int | None  # from the callback or ListLiveSnapshotFiles
    key_ts_ms: int | None  # from {UnixTimestamp} in the key
    time_from_ice: bool = False  # create_ts_ms came from ICE's listing, not from a callback body (a hint)


@dataclass(frozen=True)
class Prepared:
    """One object ready to index: either already indexed (``existing``) or fetched, thumbnailed and stored,
    with the rows still to write."""

    existing: int | None
    snapshot: dict[str, Any] | None = None
    thumbnails: tuple[dict[str, Any], ...] = ()
    existing_at: int | None = None  # the existing row's captured_at_ms (its partition key)
