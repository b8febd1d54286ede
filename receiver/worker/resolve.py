"""Which objects an event names: check the callback against the job, then its key, or the job's recent files."""

from __future__ import annotations

import logging

from receiver.adapters.base import FilesPage, JobInfo, format_ice_time
from receiver.adapters.ice_cache import CachedIceGateway
from receiver.exceptions import ObjectNotFound, Rejected
from receiver.media.formats import check_key_safe, match_key, overwrite_key
from receiver.services import Services
from receiver.timeutil import now_ms
from receiver.worker.types import Claimed, Target

log = logging.getLogger(__name__)

# A bare-JobId callback names no file: look this far around its time for sequence files not yet indexed.
SEQUENCE_LOOKBACK_MIN_S = 60
SEQUENCE_LOOKAHEAD_S = 60
MAX_LIST_PAGES = 20
# The window's edges are rounded out to this grid, so the events of one batch (one job, moments close together)
# ask ICE the same question, answered once for all of them (CachedIceGateway.list_files_shared): a callback of
# thousands of FileList items costs a few ListLiveSnapshotFiles calls, not one (or 20 pages) per item.
SEQUENCE_WINDOW_GRID_S = 60
# Last-Modified has second precision and OSS stamps the end of the upload: beyond this, it is another write.
OVERWRITE_TIME_TOLERANCE_MS = 2000
# A callback's CreateTimestamp within this of the object's Last-Modified is believed (ICE writes, then calls).
HINT_TIME_TOLERANCE_MS = 5 * 60 * 1000


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


def sequence_window(moment_ms: int, interval_seconds: int | None) -> tuple[int, int]:
    """The [start, end] (epoch ms) listed for a bare-JobId event at ``moment_ms``: at least the lookback before
    and the lookahead after it, the same for every moment of one SEQUENCE_WINDOW_GRID_S cell."""
    grid = SEQUENCE_WINDOW_GRID_S * 1000
    lookback = max(3 * (interval_seconds or 5), SEQUENCE_LOOKBACK_MIN_S) * 1000
    cell = moment_ms // grid * grid
    start = (cell - lookback) // grid * grid
    end = -(-(cell + grid + SEQUENCE_LOOKAHEAD_S * 1000) // grid) * grid
    return start, end


def _list_page(svc: Services, job_id: str, start: str, end: str, received_ms: int) -> FilesPage:
    if isinstance(svc.ice, CachedIceGateway):
        # Any answer sent after this event's callback arrived holds its file: share it with the batch.
        return svc.ice.list_files_shared(job_id, start, end, limit=100, fetched_after_ms=received_ms)
    return svc.ice.list_files(job_id, start, end, limit=100)


def _recent_sequence_files(svc: Services, job: JobInfo, ev: Claimed) -> list[Target]:
    received_ms = int(ev.received_at.timestamp() * 1000)
    window = sequence_window(ev.create_timestamp_ms or received_ms, job.interval_seconds)
    start, end = (format_ice_time(ms) for ms in window)
    out: list[Target] = []
    seen: set[str] = set()
    for _ in range(MAX_LIST_PAGES):
        page = _list_page(svc, job.job_id, start, end, received_ms)
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
