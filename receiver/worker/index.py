"""Indexing one object: skip what is indexed, fetch, thumbnail, store the files, write the rows; and the jobs
table kept in step with what ICE last said about each job."""

from __future__ import annotations

import hashlib
import logging
import time
from functools import cache
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import BigInteger, Connection, Select, bindparam, func, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from receiver.accounts import DEFAULT
from receiver.adapters.base import JobInfo
from receiver.db import outbox
from receiver.db.engine import insert_for, single_statement
from receiver.db.models import Job, MessageType, Snapshot, Thumbnail, utcnow
from receiver.exceptions import Rejected
from receiver.media.keys import thumbnail_key
from receiver.media.signals import snapshot_columns
from receiver.media.thumbnails import make_thumbnails
from receiver.services import Services
from receiver.web.serialize import snapshot_json
from receiver.worker.resolve import captured_at
from receiver.worker.types import Claimed, Prepared, Target

log = logging.getLogger(__name__)


@cache
def existing_statement(with_etag: bool, windowed: bool = False) -> Select[int, int]:
    """(id, captured_at_ms) of the row of one identity (job, bucket, object[, ETag]) [near a time]: the pre-fetch
    probe, write_index's look-again and, compiled into its CTE, the PostgreSQL done-bypass's."""
    # Built once (see pipeline._claim_statement): constructing a SELECT costs more than running it.
    q = select(Snapshot.id, Snapshot.captured_at_ms).where(
        Snapshot.job_id == bindparam("job_id"), Snapshot.oss_bucket == bindparam("bucket"),
        Snapshot.oss_object == bindparam("key"))
    if with_etag:
        q = q.where(Snapshot.etag == bindparam("etag"))
    if windowed:
        q = q.where(Snapshot.captured_at_ms.between(bindparam("lo"), bindparam("hi")))
    return q.limit(1)


# Two reports of one content disagree on its capture time by seconds (a callback's CreateTimestamp, ICE's
# listing, the key's {UnixTimestamp}, Last-Modified; resolve.captured_at drops a hint far from Last-Modified).
# A day either side is far beyond that, and lets PostgreSQL read three day partitions instead of all of them.
IDENTITY_WINDOW_MS = 86_400_000
# The claim's probe (pipeline._probe) looks this far either side of the callback's time: twice the identity
# window, so its "nothing there" covers prepare's window whenever the key's time is within a day of it.
PROBE_WINDOW_MS = 2 * IDENTITY_WINDOW_MS


@cache
def _index_statements(dialect: str) -> tuple[Executable, Executable]:
    # DO NOTHING on the identity constraint rather than an IntegrityError: the insert shares its transaction
    # with the event's own update (pipeline._finish_done), which an error would abort.
    snapshot = insert_for(dialect)(Snapshot).on_conflict_do_nothing().returning(Snapshot.id)
    return snapshot, insert(Thumbnail)


@cache
def _identity_lock() -> Executable:
    return select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))


def existing_on(conn: Connection, job_id: str, bucket: str, key: str, etag: str | None,
                 near_ms: int | None = None) -> tuple[int, int] | None:
    """(id, captured_at_ms) of the indexed row for this object (and content), if any."""
    params: dict[str, object] = {"job_id": job_id, "bucket": bucket, "key": key, "etag": etag}
    if near_ms is not None:
        params.update(lo=near_ms - IDENTITY_WINDOW_MS, hi=near_ms + IDENTITY_WINDOW_MS)
    statement = existing_statement(etag is not None, near_ms is not None)
    row = conn.execute(statement, params).first()
    return None if row is None else (int(row[0]), int(row[1]))


def _existing(svc: Services, job_id: str, bucket: str, key: str, etag: str | None,
              near_ms: int | None = None) -> tuple[int, int] | None:
    """The pre-fetch probe. ``near_ms``: a time the row's capture time is expected near (the key's timestamp or
    the event's time hint, or the overwrite object's Last-Modified), so PostgreSQL reads those days'
    partitions, not all of a year's. A hint more than IDENTITY_WINDOW_MS off costs a fetch (and fails the event
    if the object has been deleted since); write_index then looks again around the final capture time. Only
    two capture times for one content more than that window apart (ICE's own listing time a day away from the
    key's timestamp and Last-Modified) would index it twice."""
    with single_statement(svc.read_engine).connect() as conn:
        return existing_on(conn, job_id, bucket, key, etag, near_ms)


def identity_lock_key(snap: dict[str, Any]) -> int:
    """The advisory-lock key of a snapshot's identity (job, bucket, object, ETag): a signed 64-bit int."""
    ident = "\0".join((snap["job_id"], snap["oss_bucket"], snap["oss_object"], snap["etag"])).encode()
    return int.from_bytes(hashlib.sha256(ident).digest()[:8], "big", signed=True)


def write_index(conn: Connection, p: Prepared, account: str = DEFAULT, widths: tuple[int, ...] = ()) -> int:
    """Write a prepared object's rows on ``conn`` (the caller's transaction); returns the snapshot id."""
    if p.existing is not None:
        return p.existing
    assert p.snapshot is not None
    insert_snapshot, insert_thumbnails = _index_statements(conn.dialect.name)
    snap = p.snapshot
    # The identity constraint holds captured_at_ms (partitions), and two events for one content may carry
    # different capture times, so the constraint alone no longer dedupes: look again inside this transaction.
    # PostgreSQL first serialises writers of one identity; SQLite's BEGIN IMMEDIATE already serialises all.
    if conn.dialect.name == "postgresql":
        conn.execute(_identity_lock(), {"key": identity_lock_key(snap)})
    at = snap["captured_at_ms"]
    found = existing_on(conn, snap["job_id"], snap["oss_bucket"], snap["oss_object"], snap["etag"], at)
    if found is not None:
        return found[0]
    sid: int | None = conn.execute(insert_snapshot, snap).scalar_one_or_none()
    if sid is None:
        # Raced with another worker (or the reconciler) on the same content: theirs is the row.
        # (The constraint holds captured_at_ms: the conflicting row has this very capture time.)
        raced = existing_on(conn, snap["job_id"], snap["oss_bucket"], snap["oss_object"], snap["etag"], at)
        if raced is None:  # the conflicting row must be visible to this transaction
            raise RuntimeError(f"snapshot {snap['oss_object']!r} conflicted but cannot be found")
        return raced[0]
    if p.thumbnails:  # an empty list would run it once, without parameters
        conn.execute(insert_thumbnails, [{**r, "snapshot_id": sid, "captured_at_ms": snap["captured_at_ms"]}
                                         for r in p.thumbnails])
    # Only a row this transaction inserted is announced, in this transaction: a crash loses both or neither.
    announce_snapshot(conn, sid, p, account, widths)
    return sid


def announce_snapshot(conn: Connection, sid: int, p: Prepared, account: str, widths: tuple[int, ...]) -> None:
    """snapshot.created with the snapshot object exactly as the API gives it (thumbnails largest first, URL
    widths from the configured ones), whichever dispatcher runs this (threads have no app context)."""
    snap = announce_body(p, sid)
    outbox.record(conn, MessageType.SNAPSHOT_CREATED, snapshot_json(snap, widths=widths or None),
                  job_id=snap.job_id, account=account)


def announce_body(p: Prepared, sid: int) -> Snapshot:
    """The new snapshot as snapshot_json reads it, from the prepared row."""
    assert p.snapshot is not None
    # Plain namespaces with the row's attributes, not ORM instances: instrumenting a Snapshot and its Thumbnails
    # cost more than the rest of the message (bench/pipeline.py, server CPU per frame).
    thumbs = sorted((SimpleNamespace(**r) for r in p.thumbnails), key=lambda t: -t.width)
    return cast(Snapshot, SimpleNamespace(**p.snapshot, id=sid, thumbnails=thumbs))


def _probed(ev: Claimed | None, job: JobInfo, t: Target) -> tuple[bool, tuple[int, int] | None]:
    """Whether the claim's probe (pipeline._probe) settles ``t``, and the row it found. It does when ``t`` is
    the event's own object and the answer covers the window the SELECT probe would read (a day either side
    of the key's time, else the callback's): "nothing there" when that window lies inside the claim's, a row
    when it lies inside that window (a row further off proves nothing: LIMIT 1 returns any row, and a key
    without a timestamp may be written again days later)."""
    if (ev is None or not ev.probed or ev.oss_object != t.key or ev.oss_bucket != job.bucket
            or ev.create_timestamp_ms is None):
        return False, None
    center = t.key_ts_ms or t.create_ts_ms
    if center is None or abs(center - ev.create_timestamp_ms) > PROBE_WINDOW_MS - IDENTITY_WINDOW_MS:
        return False, None
    if ev.probed_row is None:
        return True, None
    sid, at = ev.probed_row
    if abs(at - center) > IDENTITY_WINDOW_MS:
        return False, None
    return True, (sid, at)  # any row for a sequence key means it is done


def prepare(svc: Services, job: JobInfo, t: Target, ev: Claimed | None = None) -> Prepared:
    """Everything before the database write: skip what is indexed, fetch, thumbnail, store the files.
    ``ev``: the claimed event, whose claim may have probed for this object already."""
    assert job.endpoint and job.bucket
    endpoint, bucket, settings = job.endpoint, job.bucket, svc.settings
    if t.kind == "sequence":
        # Sequence objects are written once: any row for the key means it is done.
        settled, found = _probed(ev, job, t)
        if not settled:
            # The key's own {UnixTimestamp} first: a callback's time is only a hint (resolve.captured_at).
            found = _existing(svc, job.job_id, bucket, t.key, None, t.key_ts_ms or t.create_ts_ms)
    else:
        # Overwrite: a HEAD tells whether this content is already indexed without downloading it.
        meta = svc.source.head(endpoint, bucket, t.key)
        found = _existing(svc, job.job_id, bucket, t.key, meta.etag, meta.last_modified_ms)
    if found is not None:
        return Prepared(found[0], existing_at=found[1])
    with svc.metrics.stage("fetch"):
        obj = svc.source.get(endpoint, bucket, t.key, settings.max_image_bytes)
    if t.kind == "overwrite":
        # The object may have been rewritten between HEAD and GET: its new content may be indexed already.
        # (A sequence object raced by another worker is caught by the unique constraint instead.)
        found = _existing(svc, job.job_id, bucket, t.key, obj.etag, obj.last_modified_ms)
        if found is not None:
            return Prepared(found[0], existing_at=found[1])
    with svc.metrics.stage("thumbnail"):
        thumbs = make_thumbnails(obj.data, settings.thumbnail_widths, settings.thumbnail_format,
                                 quality=settings.thumbnail_quality, max_pixels=settings.max_image_pixels)
    t_store = time.perf_counter()
    ident = hashlib.sha256(f"{job.job_id}\0{bucket}\0{t.key}\0{obj.etag}".encode()).hexdigest()[:32]
    at_ms = captured_at(t, obj.last_modified_ms)
    rows = []
    made: set[int] = set()
    for th in thumbs.thumbnails:
        # A source narrower than a configured width is not upscaled, so two widths can clamp to one size.
        if th.width in made:
            continue
        made.add(th.width)
        ext = "jpg" if th.format == "jpeg" else th.format
        # "<hash 2 hex>/<capture day>/<ident>-<width>": 256 hashed prefixes first, so OSS spreads the writes
        # (a sequential prefix such as the date first caps a bucket's request rate), and the day second, so
        # retention removes a day with 256 prefix listings instead of listing the whole store. No folder per
        # snapshot (a new folder cost a failed open and a mkdir per frame). Rows keep their own key, so
        # thumbnails stored under the older "ab/<ident>-320.jpg" and "ab/<ident>/320.jpg" layouts stay put.
        storage_key = thumbnail_key(ident, at_ms, th.width, ext)
        # Deterministic keys: a retried ingest overwrites the same files instead of leaving orphans.
        svc.thumbs.put(storage_key, th.data, th.content_type)
        svc.metrics.count_thumbnail_bytes(len(th.data))
        rows.append({"width": th.width, "height": th.height, "format": th.format, "storage_key": storage_key,
                     "size": len(th.data), "etag": hashlib.sha256(th.data).hexdigest()[:32]})
    snap = {
        "job_id": job.job_id, "captured_at_ms": at_ms, "kind": t.kind,
        "oss_endpoint": endpoint, "oss_bucket": bucket, "oss_object": t.key, "etag": obj.etag, "size": obj.size,
        "width": thumbs.source_width, "height": thumbs.source_height, "sha256": hashlib.sha256(obj.data).hexdigest(),
        "create_timestamp_ms": t.create_ts_ms, "last_modified_ms": obj.last_modified_ms,
        **snapshot_columns(thumbs),
    }
    svc.metrics.observe_stage("store", time.perf_counter() - t_store)
    return Prepared(None, snap, tuple(rows))


def upsert_job(session: Session, info: JobInfo, *, track: bool = False, account: str = DEFAULT) -> Job:
    """The job's row brought up to ``info``. A new row belongs to ``account``; an existing row keeps the
    account that first reported or tracked it, and raises Rejected when that is another account (nothing of the
    row is changed then)."""
    job = session.get(Job, info.job_id)
    if job is None:
        # Two workers meeting a new job at once both get here on PostgreSQL (SQLite serialises writers):
        # ON CONFLICT DO NOTHING waits for the winner's commit, then we read its row instead of failing.
        insert = insert_for(session.get_bind().dialect.name)
        session.execute(insert(Job).values(job_id=info.job_id, tracked=False, account=account)
                        .on_conflict_do_nothing(index_elements=["job_id"]))
        job = session.get(Job, info.job_id)
        assert job is not None
    if job.account != account:
        raise Rejected(f"job belongs to account {job.account!r}, not {account!r}")
    job.name = info.name
    job.status = info.status
    job.stream_url = info.stream_url
    job.interval_seconds = info.interval_seconds
    job.oss_endpoint = info.endpoint
    job.oss_bucket = info.bucket
    job.overwrite_format = info.overwrite_format
    job.sequence_format = info.sequence_format
    job.callback_url = info.callback_url
    job.raw = info.to_json()
    job.fetched_at = utcnow()
    if track and not job.untracked:
        job.tracked = True
    return job
