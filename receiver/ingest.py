"""The two halves of processing one event: which objects it names, and indexing one object."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.sql import Executable

from . import metrics, sqlite_direct
from .db import insert_for
from .exceptions import ObjectNotFound, Rejected
from .formats import check_key_safe, match_key, overwrite_key
from .ice import JobInfo, format_ice_time
from .models import Snapshot, Thumbnail, utcnow
from .services import Services
from .signals import snapshot_columns
from .thumbnails import make_thumbnails
from .timeutil import now_ms

if TYPE_CHECKING:
    from .pipeline import Claimed

log = logging.getLogger(__name__)

# A bare-JobId callback names no file: look this far around its time for sequence files not yet indexed.
SEQUENCE_LOOKBACK_MIN_S = 60
SEQUENCE_LOOKAHEAD_S = 60
MAX_LIST_PAGES = 20
# Last-Modified has second precision and OSS stamps the end of the upload: beyond this, it is another write.
OVERWRITE_TIME_TOLERANCE_MS = 2000
# A callback's CreateTimestamp within this of the object's Last-Modified is believed (ICE writes, then calls).
HINT_TIME_TOLERANCE_MS = 5 * 60 * 1000


@dataclass(frozen=True)
class Target:
    key: str
    kind: str  # overwrite | sequence
    create_ts_ms: int | None  # from the callback or ListLiveSnapshotFiles
    key_ts_ms: int | None  # from {UnixTimestamp} in the key
    time_from_ice: bool = False  # create_ts_ms came from ICE's listing, not from a callback body (a hint)


def _check_output(svc: Services, job: JobInfo, ev: Claimed) -> None:
    if not job.endpoint or not job.bucket:
        raise Rejected(f"job {job.job_id} has no OSS SnapshotOutput")
    if not svc.policy.is_allowed(job.endpoint):
        raise Rejected(f"the job's OSS endpoint {job.endpoint!r} is not allowed (RECEIVER_OSS_ALLOWED_ENDPOINTS)")
    if ev.oss_bucket and ev.oss_bucket != job.bucket:
        raise Rejected(f"callback bucket {ev.oss_bucket!r} disagrees with the job's bucket {job.bucket!r}")
    if ev.oss_endpoint and svc.policy.normalize(ev.oss_endpoint) != svc.policy.normalize(job.endpoint):
        raise Rejected(f"callback endpoint {ev.oss_endpoint!r} disagrees with the job's {job.endpoint!r}")


def resolve_targets(svc: Services, job: JobInfo, ev: Claimed) -> list[Target]:
    _check_output(svc, job, ev)
    if ev.oss_object:
        key = ev.oss_object
        if ev.key_from_ice:
            # ListLiveSnapshotFiles is authoritative: a format mismatch teaches us ICE's real rendering.
            check_key_safe(key)
            try:
                m = match_key(key, job.job_id, job.overwrite_format, job.sequence_format)
                return [Target(key, m.kind, ev.create_timestamp_ms, m.timestamp_ms, time_from_ice=True)]
            except Rejected:
                log.warning("job %s: listed key %r matches neither format; indexing it anyway", job.job_id, key)
                kind = "overwrite" if ev.is_overlay else "sequence"
                return [Target(key, kind, ev.create_timestamp_ms, None, time_from_ice=True)]
        m = match_key(key, job.job_id, job.overwrite_format, job.sequence_format)
        return [Target(key, m.kind, ev.create_timestamp_ms, m.timestamp_ms)]
    targets: list[Target] = []
    if job.overwrite_format:
        targets.append(Target(overwrite_key(job.overwrite_format, job.job_id), "overwrite",
                              ev.create_timestamp_ms, None))
    if job.sequence_format:
        targets.extend(_recent_sequence_files(svc, job, ev))
    if not targets:
        if job.sequence_format:
            # Not a spoof: ICE lists nothing near this callback's time (yet, or any more). The reconciler
            # finds files ICE lists later; `receiver replay` retries this event.
            raise ObjectNotFound(f"ListLiveSnapshotFiles shows no file for job {job.job_id} near the "
                                 "callback's time, and the callback names none")
        raise Rejected(f"job {job.job_id} has neither OverwriteFormat nor SequenceFormat")
    return targets


def _recent_sequence_files(svc: Services, job: JobInfo, ev: Claimed) -> list[Target]:
    moment = ev.create_timestamp_ms or int(ev.received_at.timestamp() * 1000)
    lookback = max(3 * (job.interval_seconds or 5), SEQUENCE_LOOKBACK_MIN_S)
    start = format_ice_time(moment - lookback * 1000)
    end = format_ice_time(moment + SEQUENCE_LOOKAHEAD_S * 1000)
    out: list[Target] = []
    seen: set[str] = set()
    for _ in range(MAX_LIST_PAGES):
        page = svc.ice.list_files(job.job_id, start, end, limit=100)
        for f in page.files:
            if f.is_overlay or f.oss_object in seen:
                continue
            if f.bucket != job.bucket:
                log.warning("job %s: listed file in bucket %r, job says %r; skipped", job.job_id, f.bucket, job.bucket)
                continue
            try:
                m = match_key(f.oss_object, job.job_id, job.overwrite_format, job.sequence_format)
                key_ts = m.timestamp_ms
            except Rejected:
                check_key_safe(f.oss_object)
                key_ts = None
            seen.add(f.oss_object)
            out.append(Target(f.oss_object, "sequence", f.create_timestamp_ms, key_ts, time_from_ice=True))
        if not page.next_start_time or page.next_start_time == start:
            break
        start = page.next_start_time
    return out


def captured_at(t: Target, last_modified_ms: int | None) -> int:
    """product.md: the file's CreateTimestamp/CreateTime, else {UnixTimestamp} in the key, else Last-Modified.

    A time from a callback body is only a hint: it is used when it agrees with the object's own
    Last-Modified, so a forged or mistaken callback cannot move a snapshot in history.
    """
    lm = last_modified_ms
    create = t.create_ts_ms
    if create is not None and lm is not None:
        if not t.time_from_ice and abs(create - lm) > HINT_TIME_TOLERANCE_MS:
            log.warning("callback time %s for %s is far from its Last-Modified %s; not used", create, t.key, lm)
            create = None
        elif t.kind == "overwrite" and abs(lm - create) > OVERWRITE_TIME_TOLERANCE_MS:
            # Fetched late (retries, backlog): the bytes are a later rewrite than the event's moment.
            create = None
    if t.kind == "overwrite" and create is None and lm is not None:
        return lm
    return create or t.key_ts_ms or lm or now_ms()


@cache
def _existing_statement(with_etag: bool) -> Executable:
    # Built once (see pipeline._claim_statement): constructing a SELECT costs more than running it.
    q = select(Snapshot.id).where(Snapshot.job_id == bindparam("job_id"), Snapshot.oss_bucket == bindparam("bucket"),
                                  Snapshot.oss_object == bindparam("key"))
    if with_etag:
        q = q.where(Snapshot.etag == bindparam("etag"))
    return q.limit(1)


@cache
def _index_statements(dialect: str) -> tuple[Executable, Executable]:
    # DO NOTHING on the identity constraint rather than an IntegrityError: the insert shares its transaction
    # with the event's own update (pipeline._finish_done), which an error would abort.
    snapshot = insert_for(dialect)(Snapshot).on_conflict_do_nothing().returning(Snapshot.id)
    return snapshot, insert(Thumbnail)


def _existing_on(conn: Connection, job_id: str, bucket: str, key: str, etag: str | None) -> int | None:
    params = {"job_id": job_id, "bucket": bucket, "key": key, "etag": etag}
    found: int | None = sqlite_direct.execute(conn, _existing_statement(etag is not None), params).scalar_one_or_none()
    return found


def _existing(svc: Services, job_id: str, bucket: str, key: str, etag: str | None) -> int | None:
    with svc.read_engine.connect() as conn:
        return _existing_on(conn, job_id, bucket, key, etag)


@dataclass(frozen=True)
class Prepared:
    """One object ready to index: either already indexed (``existing``) or fetched, thumbnailed and stored,
    with the rows still to write."""

    existing: int | None
    snapshot: dict[str, Any] | None = None
    thumbnails: tuple[dict[str, Any], ...] = ()


def write_index(conn: Connection, p: Prepared) -> int:
    """Write a prepared object's rows on ``conn`` (the caller's transaction); returns the snapshot id."""
    if p.existing is not None:
        return p.existing
    assert p.snapshot is not None
    insert_snapshot, insert_thumbnails = _index_statements(conn.dialect.name)
    # indexed_at is passed, not left to the column default: the direct path runs no Python-side defaults.
    row = {**p.snapshot, "indexed_at": utcnow()}
    sid: int | None = sqlite_direct.execute(conn, insert_snapshot, row).scalar_one_or_none()
    if sid is None:
        # Raced with another worker (or the reconciler) on the same content: theirs is the row.
        snap = p.snapshot
        found = _existing_on(conn, snap["job_id"], snap["oss_bucket"], snap["oss_object"], snap["etag"])
        if found is None:  # the conflicting row must be visible to this transaction
            raise RuntimeError(f"snapshot {snap['oss_object']!r} conflicted but cannot be found")
        return found
    sqlite_direct.execute(conn, insert_thumbnails, [{**r, "snapshot_id": sid} for r in p.thumbnails])
    return sid


def prepare(svc: Services, job: JobInfo, t: Target) -> Prepared:
    """Everything before the database write: skip what is indexed, fetch, thumbnail, store the files."""
    assert job.endpoint and job.bucket
    endpoint, bucket, settings = job.endpoint, job.bucket, svc.settings
    if t.kind == "sequence":
        # Sequence objects are written once: any row for the key means it is done.
        found = _existing(svc, job.job_id, bucket, t.key, None)
    else:
        # Overwrite: a HEAD tells whether this content is already indexed without downloading it.
        found = _existing(svc, job.job_id, bucket, t.key, svc.source.head(endpoint, bucket, t.key).etag)
    if found is not None:
        return Prepared(found)
    with metrics.stage(svc, "fetch"):
        obj = svc.source.get(endpoint, bucket, t.key, settings.max_image_bytes)
    if t.kind == "overwrite":
        # The object may have been rewritten between HEAD and GET: its new content may be indexed already.
        # (A sequence object raced by another worker is caught by the unique constraint instead.)
        found = _existing(svc, job.job_id, bucket, t.key, obj.etag)
        if found is not None:
            return Prepared(found)
    with metrics.stage(svc, "thumbnail"):
        thumbs = make_thumbnails(obj.data, settings.thumbnail_widths, settings.thumbnail_format,
                                 quality=settings.thumbnail_quality, max_pixels=settings.max_image_pixels)
    t_store = time.perf_counter()
    ident = hashlib.sha256(f"{job.job_id}\0{bucket}\0{t.key}\0{obj.etag}".encode()).hexdigest()[:32]
    rows = []
    made: set[int] = set()
    for th in thumbs.thumbnails:
        # A source narrower than a configured width is not upscaled, so two widths can clamp to one size.
        if th.width in made:
            continue
        made.add(th.width)
        ext = "jpg" if th.format == "jpeg" else th.format
        # 256 shard folders, as git keeps loose objects, and no folder per snapshot: a new folder cost a
        # failed open and a mkdir per frame, and pruning left every emptied one behind. Rows keep their own
        # key, so thumbnails stored under the older "ab/<ident>/320.jpg" layout stay where they are.
        storage_key = f"{ident[:2]}/{ident}-{th.width}.{ext}"
        # Deterministic keys: a retried ingest overwrites the same files instead of leaving orphans.
        svc.thumbs.put(storage_key, th.data, th.content_type)
        metrics.count_thumbnail_bytes(svc, len(th.data))
        rows.append({"width": th.width, "height": th.height, "format": th.format, "storage_key": storage_key,
                     "size": len(th.data), "etag": hashlib.sha256(th.data).hexdigest()[:32]})
    snap = {
        "job_id": job.job_id, "captured_at_ms": captured_at(t, obj.last_modified_ms), "kind": t.kind,
        "oss_endpoint": endpoint, "oss_bucket": bucket, "oss_object": t.key, "etag": obj.etag, "size": obj.size,
        "width": thumbs.source_width, "height": thumbs.source_height, "sha256": hashlib.sha256(obj.data).hexdigest(),
        "create_timestamp_ms": t.create_ts_ms, "last_modified_ms": obj.last_modified_ms,
        **snapshot_columns(thumbs),
    }
    metrics.observe_stage(svc, "store", time.perf_counter() - t_store)
    return Prepared(None, snap, tuple(rows))
