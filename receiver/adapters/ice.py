"""ICE gateway: GetLiveSnapshotJob / ListLiveSnapshotFiles / ListLiveSnapshotJobs over the official SDK.

SDK exceptions are translated into the receiver's errors (design/ice.md section 6): JobNotFound, Transient
(throttling, 5xx, timeouts, refused connections) and IceError (other, permanent 4xx such as bad credentials).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import urlsplit

from alibabacloud_ice20201109 import models as ice_models
from alibabacloud_ice20201109.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException, ServerException, ThrottlingException
from Tea.exceptions import TeaException

from receiver import metrics
from receiver.adapters.base import (
    FilesPage,
    IceGateway,
    JobInfo,
    JobSummary,
    SnapshotFile,
    format_ice_time,
    optional_int,
    optional_str,
    parse_ice_time,
)
from receiver.adapters.credentials import AccountCredential
from receiver.adapters.ratelimit import TokenBucket
from receiver.config import Settings
from receiver.exceptions import CredentialUnavailable, IceError, JobNotFound, ReceiverError, Transient

DAY_SECONDS = 86_400
T = TypeVar("T")


def build_client(
    endpoint: str,
    access_key_id: str | None,
    secret: str | None,
    security_token: str | None = None,
    region: str = "cn-shanghai",
    timeout_ms: int = 5000,
    credential: AccountCredential | None = None,
) -> Client:
    """An SDK client; ``endpoint`` is a host[:port] (HTTPS) or a full ``http(s)://host:port`` URL."""
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise IceError(f"ICE endpoint must be host[:port] or http(s)://host[:port], got {endpoint!r}")
    # Missing credentials are not an error here: the SDK raises InvalidCredentials per call, which
    # SdkIceGateway turns into an IceError, so an app without ICE keys still starts (e.g. for the read API).
    if credential is not None and credential.configured:
        # The account's credential object: the SDK asks it for the current key, secret and token per call.
        config = open_api_models.Config(credential=credential, region_id=region, endpoint=parts.netloc,
                                        protocol=parts.scheme, connect_timeout=timeout_ms, read_timeout=timeout_ms)
        return Client(config)
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

    def __init__(self, client: Client, *, account: str = "default", credential: AccountCredential | None = None,
                 bucket: TokenBucket | None = None) -> None:
        self._client = client
        self.account = account
        self.credential = credential if credential is not None and credential.configured else None
        self.bucket = bucket

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
        if self.credential is not None:
            # A credential problem makes the caller wait (Transient) before anything is sent, and is told
            # apart from ICE being unreachable, which the SDK would make of it.
            try:
                self.credential.check()
            except CredentialUnavailable as e:
                metrics.count_call("ice", op, e.code, self.account)
                raise
        if self.bucket is not None:
            self.bucket.acquire()
        try:
            result = fn()
        except TeaException as e:
            err = _translate(e, what)
            if self.bucket is not None and isinstance(err, Transient) and "Throttling" in str(err):
                self.bucket.throttled_answer()
            metrics.count_call("ice", op, err.code, self.account)
            raise err from e
        metrics.count_call("ice", op, None, self.account)
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
                endpoint=optional_str(f.oss_endpoint),
                bucket=optional_str(f.oss_bucket),
                oss_object=f.oss_object,
                create_time=optional_str(f.create_time),
                create_timestamp_ms=optional_int(f.create_timestamp),
                is_overlay=bool(f.is_overlay),
            )
            for f in (body.file_list or [])
            if f.oss_object  # an item without a key names nothing we could fetch
        ]
        return FilesPage(files=files, next_start_time=optional_str(body.next_start_time))

    def list_jobs(
        self, page_no: int = 1, page_size: int = 100, status: str | None = None
    ) -> tuple[list[JobSummary], int]:
        req = ice_models.ListLiveSnapshotJobsRequest(page_no=page_no, page_size=page_size, status=status)
        body = self._call("ListLiveSnapshotJobs", lambda: self._client.list_live_snapshot_jobs(req).body)
        jobs = [
            JobSummary(
                job_id=j.job_id,
                name=optional_str(j.job_name),
                status=optional_str(j.status),
                template_id=optional_str(j.template_id),
                interval_seconds=optional_int(j.time_interval),
                endpoint=optional_str(j.snapshot_output.endpoint) if j.snapshot_output else None,
                bucket=optional_str(j.snapshot_output.bucket) if j.snapshot_output else None,
                create_time=optional_str(j.create_time),
            )
            for j in (body.job_list or [])
            if j.job_id
        ]
        return jobs, optional_int(body.total_count) or 0


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
