"""What the rest of the receiver sees of ICE and OSS: protocols and value types, nothing that talks.

This module imports nothing of the receiver (an import-linter contract holds it to that), so any layer can
type against it without pulling in the SDKs, settings or metrics. The implementations live beside it:
ice.py and ice_cache.py for ICE, oss_source.py and thumbstore.py for OSS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

__all__ = [
    "ICE_TIME_FORMAT",
    "EndpointRules",
    "FetchedObject",
    "FilesPage",
    "IceGateway",
    "JobInfo",
    "JobSummary",
    "ObjectMeta",
    "SnapshotFile",
    "SourceStore",
    "ThumbnailStore",
    "format_ice_time",
    "optional_int",
    "optional_str",
    "parse_ice_time",
]

ICE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_ice_time(ms: int) -> str:
    """Epoch milliseconds -> ICE's UTC ``YYYY-MM-DDTHH:MM:SSZ`` (truncated to the second)."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime(ICE_TIME_FORMAT)


def parse_ice_time(s: str) -> int:
    """ICE's UTC ``YYYY-MM-DDTHH:MM:SSZ`` -> epoch milliseconds; ValueError if malformed."""
    return int(datetime.strptime(s, ICE_TIME_FORMAT).replace(tzinfo=UTC).timestamp()) * 1000


def optional_str(value: Any) -> str | None:
    # ICE reports unset optional fields as empty strings; None is easier to test against.
    return str(value) if value not in (None, "") else None


def optional_int(value: Any) -> int | None:
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
        """Build from the GetLiveSnapshotJob wire dict (PascalCase), e.g. a cached ``to_json()``.

        ValueError if it has no JobId: this module knows none of the receiver's errors, so the gateway
        checks for one first and raises its own.
        """
        raw = {k: v for k, v in raw.items() if k != "RequestId"}  # per call, not part of the job
        job_id = optional_str(raw.get("JobId"))
        if job_id is None:
            raise ValueError("GetLiveSnapshotJob answer has no JobId")
        output, stream = raw.get("SnapshotOutput") or {}, raw.get("StreamInput") or {}
        return cls(
            job_id=job_id,
            name=optional_str(raw.get("JobName")),
            status=optional_str(raw.get("Status")),
            stream_url=optional_str(stream.get("Url")),
            endpoint=optional_str(output.get("Endpoint")),
            bucket=optional_str(output.get("Bucket")),
            overwrite_format=optional_str(raw.get("OverwriteFormat")),
            sequence_format=optional_str(raw.get("SequenceFormat")),
            interval_seconds=optional_int(raw.get("TimeInterval")),
            callback_url=optional_str(raw.get("CallbackUrl")),
            create_time=optional_str(raw.get("CreateTime")),
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
    """Raises JobNotFound, Transient or IceError (receiver.exceptions), never the SDK's own exceptions."""

    def get_job(self, job_id: str) -> JobInfo: ...

    def list_files(
        self, job_id: str, start_time: str, end_time: str, limit: int = 100, sort_by: str = "asc"
    ) -> FilesPage: ...

    def list_jobs(
        self, page_no: int = 1, page_size: int = 100, status: str | None = None
    ) -> tuple[list[JobSummary], int]: ...



@dataclass(frozen=True)
class FetchedObject:
    data: bytes
    etag: str
    size: int
    last_modified_ms: int | None
    content_type: str | None
    # Which check the bytes passed (oss_common.verify_body): "crc64", "md5" (a plain-MD5 ETag), "length"
    # (Content-Length only) or "none" (the answer carried nothing to check against).
    integrity: str = "none"


@dataclass(frozen=True)
class ObjectMeta:
    etag: str
    size: int
    last_modified_ms: int | None


class EndpointRules(Protocol):
    """Which OSS endpoints an event may make us contact (implemented by oss_policy.EndpointPolicy)."""

    def normalize(self, endpoint: str) -> str:
        """The bare lower-case host; raises Rejected when none remains."""
        ...

    def is_allowed(self, endpoint: str) -> bool: ...


class SourceStore(Protocol):
    """Reads ICE's snapshot objects from the endpoints named in events.

    Raises ObjectNotFound, Transient, StoreError, TooLarge or Rejected (receiver.exceptions), never oss2's.
    """

    def get(self, endpoint: str, bucket: str, key: str, max_bytes: int) -> FetchedObject: ...

    def head(self, endpoint: str, bucket: str, key: str) -> ObjectMeta: ...

    def presign(self, endpoint: str, bucket: str, key: str, expires: int) -> str: ...


class ThumbnailStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, keys: list[str]) -> None: ...

    def exists(self, key: str) -> bool: ...

    def presign(self, key: str, expires: int) -> str | None: ...

    def delete_older_than(self, prefix: str, before: float, *, dry_run: bool = False) -> int:
        """Objects under ``prefix`` last modified before ``before`` (Unix seconds): deleted, or only counted."""
        ...

    def delete_prefix(self, prefix: str, *, dry_run: bool = False) -> int:
        """Every object under ``prefix`` (ending in "/"): deleted, or only counted."""
        ...
