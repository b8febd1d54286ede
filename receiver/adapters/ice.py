"""ICE gateway: GetLiveSnapshotJob / ListLiveSnapshotFiles / ListLiveSnapshotJobs over the official SDK.

SDK exceptions are translated into the receiver's errors (design/ice.md section 6): JobNotFound, Transient
(throttling, 5xx, timeouts, refused connections) and IceError (other, permanent 4xx such as bad credentials).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from alibabacloud_ice20201109 import models as ice_models
from alibabacloud_ice20201109.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException, ServerException, ThrottlingException
from Tea.exceptions import TeaException

from receiver import metrics
from receiver.config import Settings
from receiver.exceptions import JobNotFound, ReceiverError, Transient

ICE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DAY_SECONDS = 86_400
T = TypeVar("T")


class IceError(ReceiverError):
    """ICE refused the request for a reason retrying will not fix (credentials, signature, bad parameters)."""

    code = "IceError"

    def __init__(self, message: str, ice_code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.ice_code = ice_code
        self.status = status


def format_ice_time(ms: int) -> str:
    """Epoch milliseconds -> ICE's UTC ``YYYY-MM-DDTHH:MM:SSZ`` (truncated to the second)."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime(ICE_TIME_FORMAT)


def parse_ice_time(s: str) -> int:
    """ICE's UTC ``YYYY-MM-DDTHH:MM:SSZ`` -> epoch milliseconds; ValueError if malformed."""
    return int(datetime.strptime(s, ICE_TIME_FORMAT).replace(tzinfo=UTC).timestamp()) * 1000


def _str(value: Any) -> str | None:
    # ICE reports unset optional fields as empty strings; None is easier to test against.
    return str(value) if value not in (None, "") else None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    name: str | None
    status: str | None
    stream_url: str | None
    endpoint: str | None  # OSS host as submitted, e.g. "oss-cn-shanghai.aliyuncs.com"
    bucket: str | None
    overwrite_format: str | None
    sequence_format: str | None
    interval_seconds: int | None
    callback_url: str | None
    create_time: str | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobInfo:
        """Build from the GetLiveSnapshotJob wire dict (PascalCase), e.g. a cached ``to_json()``."""
        raw = {k: v for k, v in raw.items() if k != "RequestId"}  # per call, not part of the job
        job_id = _str(raw.get("JobId"))
        if job_id is None:
            raise IceError("GetLiveSnapshotJob answer has no JobId")
        output, stream = raw.get("SnapshotOutput") or {}, raw.get("StreamInput") or {}
        return cls(
            job_id=job_id,
            name=_str(raw.get("JobName")),
            status=_str(raw.get("Status")),
            stream_url=_str(stream.get("Url")),
            endpoint=_str(output.get("Endpoint")),
            bucket=_str(output.get("Bucket")),
            overwrite_format=_str(raw.get("OverwriteFormat")),
            sequence_format=_str(raw.get("SequenceFormat")),
            interval_seconds=_int(raw.get("TimeInterval")),
            callback_url=_str(raw.get("CallbackUrl")),
            create_time=_str(raw.get("CreateTime")),
            raw=raw,
        )


@dataclass(frozen=True)
class SnapshotFile:
    job_id: str
    endpoint: str | None
    bucket: str | None
    oss_object: str
    create_time: str | None
    create_timestamp_ms: int | None
    is_overlay: bool


@dataclass(frozen=True)
class FilesPage:
    files: list[SnapshotFile]
    next_start_time: str | None


@dataclass(frozen=True)
class JobSummary:
    """A ListLiveSnapshotJobs item: it has no formats and no CallbackUrl, so it cannot replace get_job."""

    job_id: str
    name: str | None
    status: str | None
    template_id: str | None
    interval_seconds: int | None
    endpoint: str | None
    bucket: str | None
    create_time: str | None


class IceGateway(Protocol):
    def get_job(self, job_id: str) -> JobInfo: ...

    def list_files(
        self, job_id: str, start_time: str, end_time: str, limit: int = 100, sort_by: str = "asc"
    ) -> FilesPage: ...

    def list_jobs(
        self, page_no: int = 1, page_size: int = 100, status: str | None = None
    ) -> tuple[list[JobSummary], int]: ...


def build_client(
    endpoint: str,
    access_key_id: str | None,
    secret: str | None,
    security_token: str | None = None,
    region: str = "cn-shanghai",
    timeout_ms: int = 5000,
) -> Client:
    """An SDK client; ``endpoint`` is a host[:port] (HTTPS) or a full ``http(s)://host:port`` URL."""
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise IceError(f"ICE endpoint must be host[:port] or http(s)://host[:port], got {endpoint!r}")
    # Missing credentials are not an error here: the SDK raises InvalidCredentials per call, which
    # SdkIceGateway turns into an IceError, so an app without ICE keys still starts (e.g. for the read API).
    config = open_api_models.Config(
        access_key_id=access_key_id or None,
        access_key_secret=secret or None,
        security_token=security_token or None,
        region_id=region,
        endpoint=parts.netloc,  # always explicit: most regions do not resolve from region_id alone
        protocol=parts.scheme,
        connect_timeout=timeout_ms,
        read_timeout=timeout_ms,
    )
    return Client(config)


def _translate(exc: TeaException, what: str) -> ReceiverError:
    if not isinstance(exc, AlibabaCloudException):
        # UnretryableException: timeout, refused or reset connection, or a non-JSON (e.g. HTML 502) answer.
        return Transient(f"{what}: ICE unreachable: {exc}")
    code = exc.code if exc.code not in (None, "None") else ""
    status = exc.status_code
    text = f"{what}: {status or ''} {code}: {exc.message}"
    retry_ms = exc.retry_after if isinstance(exc.retry_after, int) and exc.retry_after > 0 else None
    retry_after = retry_ms / 1000 if retry_ms is not None else None
    if isinstance(exc, ThrottlingException) or status == 429 or code.startswith("Throttling"):
        return Transient(text, retry_after=retry_after)
    if isinstance(exc, ServerException) or (status is not None and status >= 500):
        return Transient(text, retry_after=retry_after)
    # Only a 404 naming a job (or nothing) means the job is gone: InvalidAccessKeyId.NotFound is a 404 too.
    if code == "JobNotFound" or (status == 404 and (not code or "Job" in code)):
        return JobNotFound(text)
    if code == "InvalidCredentials":
        return IceError(
            f"{what}: ICE credentials are not configured; set ALIBABA_CLOUD_ACCESS_KEY_ID and "
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            code,
            status,
        )
    return IceError(text, code or None, status)


class SdkIceGateway:
    """IceGateway over ``alibabacloud_ice20201109.client.Client``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> SdkIceGateway:
        return cls(
            build_client(
                settings.ice_endpoint,
                settings.access_key_id,
                settings.access_key_secret,
                settings.security_token,
                settings.ice_region,
                settings.ice_timeout_ms,
            )
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        op = what.split(" ", 1)[0]
        try:
            result = fn()
        except TeaException as e:
            err = _translate(e, what)
            metrics.count_call("ice", op, err.code)
            raise err from e
        metrics.count_call("ice", op)
        return result

    def get_job(self, job_id: str) -> JobInfo:
        req = ice_models.GetLiveSnapshotJobRequest(job_id=job_id)
        body = self._call(
            f"GetLiveSnapshotJob {job_id!r}", lambda: self._client.get_live_snapshot_job(req).body
        )
        raw = body.to_map() if body is not None else {}
        if not raw.get("JobId"):
            # Defensive: if ICE ever answered 200 with an empty job instead of 404, it is still no job.
            raise JobNotFound(f"GetLiveSnapshotJob {job_id!r}: empty answer")
        job = JobInfo.from_json(raw)
        if job.job_id != job_id:
            raise IceError(f"GetLiveSnapshotJob {job_id!r} answered for another job {job.job_id!r}")
        return job

    def list_files(
        self, job_id: str, start_time: str, end_time: str, limit: int = 100, sort_by: str = "asc"
    ) -> FilesPage:
        req = ice_models.ListLiveSnapshotFilesRequest(
            job_id=job_id, start_time=start_time, end_time=end_time, limit=limit, sort_by=sort_by
        )
        what = f"ListLiveSnapshotFiles {job_id!r} {start_time}..{end_time}"
        body = self._call(what, lambda: self._client.list_live_snapshot_files(req).body)
        files = [
            SnapshotFile(
                job_id=job_id,
                endpoint=_str(f.oss_endpoint),
                bucket=_str(f.oss_bucket),
                oss_object=f.oss_object,
                create_time=_str(f.create_time),
                create_timestamp_ms=_int(f.create_timestamp),
                is_overlay=bool(f.is_overlay),
            )
            for f in (body.file_list or [])
            if f.oss_object  # an item without a key names nothing we could fetch
        ]
        return FilesPage(files=files, next_start_time=_str(body.next_start_time))

    def list_jobs(
        self, page_no: int = 1, page_size: int = 100, status: str | None = None
    ) -> tuple[list[JobSummary], int]:
        req = ice_models.ListLiveSnapshotJobsRequest(page_no=page_no, page_size=page_size, status=status)
        body = self._call("ListLiveSnapshotJobs", lambda: self._client.list_live_snapshot_jobs(req).body)
        jobs = [
            JobSummary(
                job_id=j.job_id,
                name=_str(j.job_name),
                status=_str(j.status),
                template_id=_str(j.template_id),
                interval_seconds=_int(j.time_interval),
                endpoint=_str(j.snapshot_output.endpoint) if j.snapshot_output else None,
                bucket=_str(j.snapshot_output.bucket) if j.snapshot_output else None,
                create_time=_str(j.create_time),
            )
            for j in (body.job_list or [])
            if j.job_id
        ]
        return jobs, _int(body.total_count) or 0


def iter_files(
    gateway: IceGateway, job_id: str, start_ms: int, end_ms: int, *, limit: int = 100
) -> Iterator[SnapshotFile]:
    """Every file with ``start_ms <= CreateTimestamp <= end_ms``, oldest first, each once.

    Splits the span into windows of at most one day (ICE's limit), follows NextStartTime, and dedupes on
    (CreateTimestamp, OssObject) because NextStartTime has second precision and undocumented boundary
    semantics, so consecutive pages and windows may repeat files.
    """
    seen: set[tuple[int | None, str]] = set()
    window_start, last = start_ms // 1000 * 1000, end_ms // 1000 * 1000
    while True:
        window_end = min(window_start + DAY_SECONDS * 1000, last)
        start, end = format_ice_time(window_start), format_ice_time(window_end)
        while True:
            page = gateway.list_files(job_id, start, end, limit=limit, sort_by="asc")
            fresh = 0
            for f in page.files:
                key = (f.create_timestamp_ms, f.oss_object)
                ts = f.create_timestamp_ms
                if key in seen or (ts is not None and not start_ms <= ts <= end_ms):
                    continue
                seen.add(key)
                fresh += 1
                yield f
            if not page.next_start_time:
                break
            if parse_ice_time(page.next_start_time) <= parse_ice_time(start) and not fresh:
                raise IceError(
                    f"ListLiveSnapshotFiles {job_id!r}: paging stuck at {start} (> {limit} files/s)"
                )
            start = page.next_start_time
        if window_end >= last:
            return
        window_start = window_end  # overlap one second: ICE's end bound may be exclusive; dedupe covers it


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    job: JobInfo | None = None
    error: BaseException | None = None


class CachedIceGateway:
    """Caches get_job (negative results too) with single flight; list_files/list_jobs pass through.

    Jobs cannot change their formats or output (there is no UpdateLiveSnapshotJob), so a short TTL is safe and
    spares ICE one call per callback. Concurrent misses for one id share a single upstream call.
    """

    def __init__(
        self,
        inner: IceGateway,
        ttl: float = 60.0,
        negative_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.inner = inner
        self._ttl, self._negative_ttl, self._clock, self._max = ttl, negative_ttl, clock, max_entries
        self._lock = threading.Lock()
        self._entries: dict[
            str, tuple[float, JobInfo | None]
        ] = {}  # job_id -> (expires_at, job or None=gone)
        self._flights: dict[str, _Flight] = {}

    @classmethod
    def from_settings(cls, inner: IceGateway, settings: Settings) -> CachedIceGateway:
        return cls(inner, ttl=settings.job_cache_seconds, negative_ttl=settings.job_negative_cache_seconds)

    def invalidate(self, job_id: str) -> None:
        with self._lock:
            self._entries.pop(job_id, None)

    def get_job(self, job_id: str) -> JobInfo:
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None and entry[0] > self._clock():
                if entry[1] is None:
                    raise JobNotFound(f"GetLiveSnapshotJob {job_id!r}: no such job (cached)")
                return entry[1]
            flight = self._flights.get(job_id)
            leader = flight is None
            if flight is None:
                flight = self._flights[job_id] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                dup = _fresh(flight.error)
                if dup is flight.error:
                    raise dup
                raise dup from flight.error
            assert flight.job is not None
            return flight.job
        try:
            flight.job = self.inner.get_job(job_id)
            self._store(job_id, self._ttl, flight.job)
            return flight.job
        except JobNotFound as e:
            flight.error = e
            self._store(job_id, self._negative_ttl, None)
            raise
        except BaseException as e:
            flight.error = e  # not cached: a transient failure must not stick
            raise
        finally:
            with self._lock:
                del self._flights[job_id]
            flight.done.set()

    def _store(self, job_id: str, ttl: float, job: JobInfo | None) -> None:
        if ttl <= 0:
            return
        with self._lock:
            now = self._clock()
            if len(self._entries) >= self._max:
                # Forged job ids could otherwise grow the negative cache without bound.
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                while len(self._entries) >= self._max:
                    del self._entries[next(iter(self._entries))]
            self._entries[job_id] = (now + ttl, job)

    def list_files(
        self, job_id: str, start_time: str, end_time: str, limit: int = 100, sort_by: str = "asc"
    ) -> FilesPage:
        return self.inner.list_files(job_id, start_time, end_time, limit=limit, sort_by=sort_by)

    def list_jobs(
        self, page_no: int = 1, page_size: int = 100, status: str | None = None
    ) -> tuple[list[JobSummary], int]:
        return self.inner.list_jobs(page_no=page_no, page_size=page_size, status=status)


def _fresh(error: BaseException) -> BaseException:
    # Each waiter raises its own copy: one exception object raised in many threads gets its traceback mangled.
    try:
        return copy.copy(error)
    except Exception:
        return error
