"""ICE's snapshot objects read over oss2, from the (allow-listed) endpoints and buckets events name."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import oss2

from receiver import metrics
from receiver.adapters.base import FetchedObject, ObjectMeta
from receiver.adapters.credentials import AccountCredential, oss_auth
from receiver.adapters.oss_common import (
    auth,
    browser_bucket,
    count_integrity,
    ms,
    path_style,
    session,
    translated,
    verify_body,
)
from receiver.adapters.oss_policy import EndpointPolicy
from receiver.config import Settings
from receiver.exceptions import Rejected, TooLarge

_MAX_CACHED_BUCKETS = 256
_READ_CHUNK = 256 * 1024


class OssSourceStore:
    """Reads ICE's snapshot objects from endpoints named in events (allow-listed)."""

    def __init__(self, settings: Settings, credential: AccountCredential | None = None,
                 account: str = "default") -> None:
        self.policy = EndpointPolicy.from_settings(settings)
        # One account's store: its credential object signs every request (and presigned URL) afresh.
        self._auth = oss_auth(credential) if credential is not None else auth(settings)
        self.account = account
        self._timeout = settings.oss_timeout_seconds
        self._session = session(settings)
        self._buckets: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        # Pooled keep-alive sockets left to the garbage collector raise ResourceWarning (an error in our
        # tests); close them when the store goes away even if nobody called close().
        self._finalizer = weakref.finalize(self, self._session.close)

    def close(self) -> None:
        """Close pooled connections. The store stays usable (a new request reconnects)."""
        self._finalizer()

    def _bucket(self, endpoint: str, bucket: str) -> Any:
        url = self.policy.resolve(endpoint)
        with self._lock:
            cached = self._buckets.get((url, bucket))
            if cached is not None:
                return cached
            try:
                b = oss2.Bucket(
                    self._auth,
                    url,
                    bucket,
                    session=self._session,
                    connect_timeout=self._timeout,
                    is_path_style=path_style(url),
                    enable_crc=False,  # checked in get() with a faster CRC
                )
            except oss2.exceptions.ClientError as e:
                raise Rejected(f"invalid OSS bucket {bucket!r} or endpoint {url!r}: {e}") from e
            if len(self._buckets) >= _MAX_CACHED_BUCKETS:
                # Bucket names come from events; keep the cache bounded even if they vary wildly.
                self._buckets.clear()
            self._buckets[(url, bucket)] = b
            return b

    def get(self, endpoint: str, bucket: str, key: str, max_bytes: int) -> FetchedObject:
        """Fetch a whole object, never holding more than ``max_bytes`` (+ one 256 KiB read) in memory."""
        b = self._bucket(endpoint, bucket)
        where = f"oss://{bucket}/{key}"
        with metrics.account_scope(self.account), translated(where, "GetObject"), b.get_object(key) as r:
            declared = r.content_length
            if declared is not None and declared > max_bytes:
                # Leaving the with-block closes the response without reading the body.
                raise TooLarge(f"{where}: {declared} bytes exceeds the {max_bytes}-byte limit")
            # Pieces joined once at the end rather than a growing bytearray copied out: each large
            # reallocation takes fresh pages from the kernel (bench/pipeline.py).
            chunks: list[bytes] = []
            size = 0
            # 256 KiB reads, not the 8 KiB the iterator yields: fewer Python-level calls per frame
            # (bench/pipeline.py).
            while chunk := r.read(_READ_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"{where}: more than {max_bytes} bytes")
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            # Over the whole body, not as it streams: one pass in C instead of one call per read. What the
            # answer offers decides the check: CRC-64, else a plain-MD5 ETag, else the length (oss_common).
            check = verify_body(where, data, crc=r.server_crc, etag=r.etag, length=declared, headers=r.headers)
        with metrics.account_scope(self.account):
            count_integrity("GetObject", check)
        return FetchedObject(
            data=data,
            etag=r.etag or "",
            size=size,
            last_modified_ms=ms(r.last_modified),
            content_type=r.content_type,
            integrity=check,
        )

    def presign(self, endpoint: str, bucket: str, key: str, expires: int) -> str:
        """A GET URL valid for ``expires`` seconds, signed locally (no request) for a browser to follow.

        It points at the mapped address, except a VPC ``-internal`` one that browsers cannot reach: then at
        the job's public endpoint (oss_common.browser_bucket, shared with the thumbnail store's redirects).
        """
        b = browser_bucket(self._bucket(endpoint, bucket), self.policy.normalize(endpoint))
        with translated(f"oss://{bucket}/{key} (presign)", None):
            return str(b.sign_url("GET", key, expires, slash_safe=True))

    def head(self, endpoint: str, bucket: str, key: str) -> ObjectMeta:
        b = self._bucket(endpoint, bucket)
        with metrics.account_scope(self.account), translated(f"oss://{bucket}/{key}", "HeadObject"):
            r = b.head_object(key)
            return ObjectMeta(
                etag=r.etag or "", size=int(r.content_length or 0), last_modified_ms=ms(r.last_modified)
            )
