"""Typed SQLAlchemy 2.0 models: jobs, the event inbox, snapshots and their thumbnails."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite keeps no zone, and its dialect swaps a DateTime subclass's own result processor for its own, so
    this is a TypeDecorator: values are stored as UTC and always come back aware (UTC), never naive (which
    .timestamp() would read as local time).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON()}


class EventStatus(StrEnum):
    """Where an inbox event is; stored as its value."""

    PENDING = "pending"  # due at next_attempt_at
    PROCESSING = "processing"  # claimed until lease_until
    DONE = "done"
    REJECTED = "rejected"  # disagreed with the job or unsafe: never fetched
    FAILED = "failed"  # gave up; replayable


class EventOrigin(StrEnum):
    """Who put an event in the inbox; stored as its value."""

    CALLBACK = "callback"
    RECONCILE = "reconcile"
    REPLAY = "replay"


class MessageType(StrEnum):
    """What a push message announces (product.md 8); stored as its value."""

    SNAPSHOT_CREATED = "snapshot.created"
    HEALTH_CHANGED = "stream.health_changed"
    EVENT_FAILED = "event.failed"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at next_attempt_at (first try or a retry)
    DELIVERED = "delivered"
    FAILED = "failed"  # the retry schedule ran out; replayable


class SubscriptionStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"  # every delivery failed for RECEIVER_WEBHOOK_DISABLE_AFTER


EVENT_STATUSES = tuple(s.value for s in EventStatus)
EVENT_ORIGINS = tuple(o.value for o in EventOrigin)
FINAL_STATUSES = (EventStatus.DONE, EventStatus.FAILED, EventStatus.REJECTED)


class StoredEnum(TypeDecorator[StrEnum]):
    """A StrEnum in a plain VARCHAR: the stored strings are the enum's values (no database enum type, so adding a
    member needs no migration), and rows read back as members."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[StrEnum], length: int = 16) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> StrEnum | None:
        return None if value is None else self.enum(value)


class Job(Base):
    """A live snapshot job: the last GetLiveSnapshotJob answer plus our tracking state."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_account_job_id", "account", "job_id"),)

    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The account that first reported or tracked the job (product.md section 7): its credentials sign every
    # ICE and OSS request of the job, and events arriving through another account's token are rejected.
    account: Mapped[str] = mapped_column(String(32), default="default", server_default="default")
    name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str | None] = mapped_column(String(32))
    stream_url: Mapped[str | None] = mapped_column(Text)
    interval_seconds: Mapped[int | None]
    oss_endpoint: Mapped[str | None] = mapped_column(String(255))
    oss_bucket: Mapped[str | None] = mapped_column(String(63))
    overwrite_format: Mapped[str | None] = mapped_column(String(255))
    sequence_format: Mapped[str | None] = mapped_column(String(255))
    callback_url: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[dict[str, Any] | None]
    fetched_at: Mapped[dt.datetime | None]
    tracked: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Set by `receiver untrack`: a later verified callback must not silently start sweeping the job again.
    untracked: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    reconciled_until_ms: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """Which process runs a loop meant to run once per deployment (reconcile, prune), and until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[dt.datetime]


class Event(Base):
    """The inbox: every callback item (or reconcile/replay hint) as received, and how processing went."""

    __tablename__ = "events"
    __table_args__ = (
        # The dedupe of ICE retries: one row per (job, identity), also under concurrent delivery.
        UniqueConstraint("job_id", "identity", name="uq_events_job_identity"),
        Index("ix_events_status_next", "status", "next_attempt_at"),
        Index("ix_events_job_id_id", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(128))
    identity: Mapped[str] = mapped_column(String(64))
    origin: Mapped[EventOrigin] = mapped_column(StoredEnum(EventOrigin), default=EventOrigin.CALLBACK)
    # The object key came from ListLiveSnapshotFiles (authoritative), not from a callback body (a hint that
    # must match the job's formats). Kept apart from origin so a replayed event is checked as strictly.
    key_from_ice: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    status: Mapped[EventStatus] = mapped_column(StoredEnum(EventStatus), default=EventStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    oss_object: Mapped[str | None] = mapped_column(Text)
    oss_bucket: Mapped[str | None] = mapped_column(String(255))
    oss_endpoint: Mapped[str | None] = mapped_column(String(255))
    create_timestamp_ms: Mapped[int | None] = mapped_column(BigInteger)
    is_overlay: Mapped[bool | None]
    # The account whose callback token (or tracked job) brought the event, and the envelope's UserId if any.
    account: Mapped[str] = mapped_column(String(32), default="default", server_default="default")
    user_id: Mapped[str | None] = mapped_column(String(64))
    raw_body: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[dt.datetime | None]

    snapshot_links: Mapped[list[EventSnapshot]] = relationship(
        back_populates="event", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def snapshot_ids(self) -> list[int]:
        return sorted(link.snapshot_id for link in self.snapshot_links)


class Snapshot(Base):
    """One distinct JPEG that ICE wrote: a sequence object, or one ETag of the overwrite object."""

    __tablename__ = "snapshots"
    __table_args__ = (
        # Snapshot identity (job, bucket, object, etag): re-fetching the same content indexes it once. On
        # PostgreSQL the table is partitioned by day of captured_at_ms (migration 0007), and a partitioned
        # table's unique constraints must hold the partition key, so captured_at_ms is in it on every backend.
        # Two events for one content can carry different capture times (a callback's CreateTimestamp, the
        # listing's CreateTime), so the constraint alone would not stop a duplicate: write_index looks the
        # identity up first, and on PostgreSQL under an advisory lock on it (worker/index.py).
        UniqueConstraint("job_id", "oss_bucket", "oss_object", "etag", "captured_at_ms", name="uq_snapshots_identity"),
        Index("ix_snapshots_job_time", "job_id", "captured_at_ms", "id"),
    )

    # The primary key is (id, captured_at_ms) on PostgreSQL (partition key again) and id alone on SQLite (an
    # autoincrement needs it); id is unique on both (one sequence). The mapper's identity is the pair, so
    # loading thumbnails by (snapshot_id, captured_at_ms) lets PostgreSQL skip every other day's partition.
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(128))
    captured_at_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    oss_endpoint: Mapped[str] = mapped_column(String(255))
    oss_bucket: Mapped[str] = mapped_column(String(63))
    oss_object: Mapped[str] = mapped_column(Text)
    etag: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int]
    height: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    create_timestamp_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_modified_ms: Mapped[int | None] = mapped_column(BigInteger)
    indexed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Health signals from the smallest thumbnail (receiver/media/signals.py); null until computed or backfilled.
    luma: Mapped[float | None] = mapped_column(Float)
    luma_spread: Mapped[float | None] = mapped_column(Float)
    dhash: Mapped[int | None] = mapped_column(BigInteger)  # 64-bit dHash as signed two's complement
    placeholder: Mapped[dict[str, Any] | None]

    thumbnails: Mapped[list[Thumbnail]] = relationship(
        # The read API loads them for a whole page at once (db/queries.py attach_thumbnails); elsewhere a
        # lazy load names (snapshot_id, captured_at_ms), so PostgreSQL reads one day's partition.
        back_populates="snapshot", cascade="all, delete-orphan", lazy="select", order_by="Thumbnail.width.desc()",
        primaryjoin="and_(Snapshot.id == foreign(Thumbnail.snapshot_id), "
                    "Snapshot.captured_at_ms == foreign(Thumbnail.captured_at_ms))",
    )


class Thumbnail(Base):
    __tablename__ = "thumbnails"

    # No foreign key to snapshots: on PostgreSQL both are partitioned by day and a day goes by dropping its
    # partitions (a key would make every DETACH check the other table); rows go with their snapshot explicitly
    # (ops/retention.py). captured_at_ms is the snapshot's, the partition key.
    snapshot_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    captured_at_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    width: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    height: Mapped[int]
    format: Mapped[str] = mapped_column(String(8))
    storage_key: Mapped[str] = mapped_column(Text)
    size: Mapped[int]
    # Strong validator for HTTP caching, so a 304 never needs the bytes.
    etag: Mapped[str] = mapped_column(String(64))

    snapshot: Mapped[Snapshot] = relationship(
        back_populates="thumbnails",
        primaryjoin="and_(Snapshot.id == foreign(Thumbnail.snapshot_id), "
                    "Snapshot.captured_at_ms == foreign(Thumbnail.captured_at_ms))",
    )


class EventSnapshot(Base):
    """Which snapshots an event produced (a bare JobId callback may resolve to several files)."""

    __tablename__ = "event_snapshots"
    # Pruning removes the links of the snapshots it deletes.
    __table_args__ = (Index("ix_event_snapshots_snapshot", "snapshot_id", "captured_at_ms"),)

    # Partitioned with snapshots on PostgreSQL (captured_at_ms, the snapshot's); no key to snapshots, as for
    # thumbnails. events is not partitioned, so its key stays.
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    captured_at_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)

    event: Mapped[Event] = relationship(back_populates="snapshot_links")


class Message(Base):
    """The outbox: one row per push message, written in the same transaction as what it announces, so a
    crash can neither lose nor invent one. ``id`` is the live stream's sequence (SSE ``id:``); ``message_id``
    is the webhook-id that never changes, across retries and replays."""

    __tablename__ = "messages"
    __table_args__ = (
        # The fan-out into deliveries finds unprocessed messages without scanning the table.
        Index("ix_messages_fanout", "fanned_out", "id"),
        Index("ix_messages_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[MessageType] = mapped_column(StoredEnum(MessageType, 32))
    job_id: Mapped[str | None] = mapped_column(String(128))
    account: Mapped[str | None] = mapped_column(String(32))
    # The exact webhook body ({"type", "timestamp", "data"}): signatures and retries are over these bytes.
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


class Subscription(Base):
    """A webhook subscriber: where to POST which messages, and the secret that signs them."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    job_ids: Mapped[list[str] | None] = mapped_column(JSON)
    accounts: Mapped[list[str] | None] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(80))
    status: Mapped[SubscriptionStatus] = mapped_column(StoredEnum(SubscriptionStatus),
                                                       default=SubscriptionStatus.ENABLED)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Since when every delivery has failed (null after any success): drives RECEIVER_WEBHOOK_DISABLE_AFTER.
    failing_since: Mapped[dt.datetime | None]
    disabled_at: Mapped[dt.datetime | None]


class Delivery(Base):
    """One message to one subscription: at least once, retried on the schedule, then failed (replayable)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_deliveries_subscription_id", "subscription_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    status: Mapped[DeliveryStatus] = mapped_column(StoredEnum(DeliveryStatus), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[dt.datetime | None]
    delivered_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class HealthState(Base):
    """Per job, the health status last announced and the candidate that must hold RECEIVER_HEALTH_CONFIRM
    evaluations before stream.health_changed goes out (hysteresis against keyframe jitter)."""

    __tablename__ = "health_states"

    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str | None] = mapped_column(String(16))  # announced (or first seen); null = never evaluated
    since: Mapped[dt.datetime | None]
    candidate: Mapped[str | None] = mapped_column(String(16))
    candidate_since: Mapped[dt.datetime | None]  # the first evaluation that saw the candidate: the announced since
    streak: Mapped[int] = mapped_column(Integer, default=0)
    evaluated_at: Mapped[dt.datetime | None]
