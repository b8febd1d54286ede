"""Object access over oss2: ICE's snapshot objects (read) and the thumbnail store (read/write).

Every oss2 or transport failure leaves this module as one of the receiver's own errors, chained with
``from`` (design/oss.md sections 2-4):

- NotFound (NoSuchKey, NoSuchBucket, a bare HEAD 404) -> ObjectNotFound
- 5xx, 429/408, RequestError (refused, timeouts), a broken or short transfer, CRC mismatch -> Transient
- anything else (403 AccessDenied/SignatureDoesNotMatch, 400 ...) -> StoreError

oss2 never retries single-object calls, so retrying Transient is the caller's job.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import ipaddress
import os
import re
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import anycrc
import oss2

from receiver import metrics
from receiver.adapters.oss_transport import DirectSession, ProxiedSession, session_for
from receiver.config import Settings
from receiver.exceptions import ObjectNotFound, ReceiverError, Rejected, StoreError, TooLarge, Transient

__all__ = [
    "EndpointPolicy",
    "FetchedObject",
    "FileThumbnailStore",
    "ObjectMeta",
    "OssThumbnailStore",
    "SourceStore",
    "ThumbnailStore",
    "thumbnail_store_from_url",
]

_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_BATCH = 1000  # OSS's per-request limit for batch delete
_MAX_CACHED_BUCKETS = 256
_READ_CHUNK = 256 * 1024
# CRC-64/XZ is what OSS sends as x-oss-hash-crc64ecma (oss.md section 5). oss2's own check builds a crcmod
# table in Python for every request and then runs a byte-at-a-time loop: ~0.9 ms of a 300 KB frame's GET
# (py-spy over bench/pipeline.py), against ~0.02 ms here. The model is immutable; calc() is thread-safe.
_CRC64 = anycrc.Model("CRC64-XZ")


def crc64(data: bytes | bytearray) -> int:
    return int(_CRC64.calc(data))


def _check_crc(where: str, sent: int | None, data: bytes, what: str = "crc mismatch") -> None:
    """OSS's x-oss-hash-crc64ecma (when it sent one) against the bytes in hand; a mismatch is Transient."""
    if sent is not None and sent != crc64(data):
        raise Transient(f"{where}: {what}")


def _session(settings: Settings) -> ProxiedSession | DirectSession:
    # One pool per store for all its buckets, sized for the worker threads so urllib3 does not discard
    # connections.
    return session_for(max(10, settings.workers * 2))


@dataclass(frozen=True)
class FetchedObject:
    data: bytes
    etag: str
    size: int
    last_modified_ms: int | None
    content_type: str | None


@dataclass(frozen=True)
class ObjectMeta:
    etag: str
    size: int
    last_modified_ms: int | None


# --- error translation ------------------------------------------------------------------------------------


def _translate(err: oss2.exceptions.OssError, where: str) -> ReceiverError:
    code = getattr(err, "code", "") or ""
    status = int(getattr(err, "status", 0) or 0)
    request_id = getattr(err, "request_id", "") or ""
    detail = f"{where}: {code or type(err).__name__} (status {status}, request {request_id or '-'})"
    if isinstance(err, oss2.exceptions.NotFound) or status == 404:
        return ObjectNotFound(detail)
    if isinstance(err, oss2.exceptions.RequestError | oss2.exceptions.InconsistentError):
        return Transient(f"{where}: {err}")
    if status >= 500 or status in (408, 429):
        return Transient(detail)
    return StoreError(detail)


@contextlib.contextmanager
def _translated(where: str, op: str = "other") -> Iterator[None]:
    try:
        yield
    except oss2.exceptions.OssError as e:
        err = _translate(e, where)
        metrics.count_call("oss", op, err.code)
        raise err from e
    except OSError as e:
        # requests raises its own RequestException (an OSError) while a streamed body is read, outside
        # oss2's wrapping: a connection dropped mid-body or a read timeout.
        metrics.count_call("oss", op, Transient.code)
        raise Transient(f"{where}: transfer failed: {e}") from e
    except ReceiverError as e:
        # Our own checks on the answer (size, truncation, CRC) fail the call too.
        metrics.count_call("oss", op, e.code)
        raise
    else:
        metrics.count_call("oss", op)


def _ms(unix_seconds: int | None) -> int | None:
    return None if unix_seconds is None else int(unix_seconds) * 1000


# --- endpoints --------------------------------------------------------------------------------------------


class EndpointPolicy:
    """Which OSS endpoints an event may make us contact, and the URL to use for each.

    ``normalize`` reduces an endpoint to a bare lower-case host: scheme, user info, port, path and a
    trailing dot are dropped. Dropping the port and scheme is deliberate: an unmapped host is always
    contacted as ``https://host`` on the default port, so an event cannot steer us to plain HTTP or to
    another service on an allowed host.

    Patterns are fnmatch-style and matched against the whole host, case-insensitively; ``*.aliyuncs.com``
    needs a label before ``.aliyuncs.com``, so neither ``evilaliyuncs.com`` nor
    ``aliyuncs.com.evil.com`` match. A host present in the endpoint map is allowed too: the operator named
    it explicitly.
    """

    def __init__(self, allowed_patterns: tuple[str, ...], endpoint_map: dict[str, str]) -> None:
        self.allowed_patterns = tuple(p.strip().lower().rstrip(".") for p in allowed_patterns if p.strip())
        self.endpoint_map = {self.normalize(h): url.strip().rstrip("/") for h, url in endpoint_map.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointPolicy:
        return cls(settings.oss_allowed_endpoints, settings.oss_endpoint_map)

    @staticmethod
    def normalize(endpoint: str) -> str:
        """``"https://OSS-cn-shanghai.aliyuncs.com:443/x"`` -> ``"oss-cn-shanghai.aliyuncs.com"``.

        Raises Rejected (not ValueError) when no valid DNS host name or IPv4 address remains, because the
        input usually comes from a callback and the pipeline already turns Rejected into a final failure.
        """
        return _normalize(endpoint)

    def is_allowed(self, endpoint: str) -> bool:
        try:
            host = self.normalize(endpoint)
        except Rejected:
            return False
        if host in self.endpoint_map:
            return True
        return any(fnmatch.fnmatchcase(host, p) for p in self.allowed_patterns)

    def resolve(self, endpoint: str) -> str:
        """The base URL to give oss2; raises Rejected for an endpoint we must not contact."""
        if not self.is_allowed(endpoint):
            raise Rejected(f"OSS endpoint {endpoint!r} is not allowed")
        return self.map_or_https(endpoint)

    def map_or_https(self, endpoint: str) -> str:
        """Like resolve, without the allow-list (for endpoints we configured ourselves)."""
        host = self.normalize(endpoint)
        return self.endpoint_map.get(host) or f"https://{host}"


@functools.lru_cache(maxsize=1024)
def _normalize(endpoint: str) -> str:
    # Cached: every frame checks its job's endpoint several times (policy, bucket lookup, callback fields),
    # and a job's endpoint does not change. Inputs are short (callback fields are capped at 255 bytes), so
    # 1024 entries stay small. Invalid input raises, which lru_cache does not remember.
    text = endpoint.strip()
    if "\\" in text or any(c.isspace() for c in text):
        raise Rejected(f"invalid OSS endpoint {endpoint!r}")
    # "//" makes urlsplit treat a bare "host:port/path" as a network location.
    parts = urlsplit(text if "://" in text else "//" + text)
    try:
        host = (parts.hostname or "").rstrip(".")
        parts.port  # noqa: B018 - raises ValueError for a non-numeric port
    except ValueError:
        raise Rejected(f"invalid OSS endpoint {endpoint!r}") from None
    if not host or not _HOST_RE.match(host):
        raise Rejected(f"invalid OSS endpoint {endpoint!r}")
    return host


def _path_style(url: str) -> bool:
    # oss2 already uses path style for IP literals; we also need it for "localhost" and single-label
    # hosts (a compose service such as "oss"), which cannot carry a bucket sub-domain. Real OSS hosts always
    # have dots and get virtual-hosted style, which they require.
    host = urlsplit(url if "://" in url else "http://" + url).hostname or ""
    if host == "localhost" or "." not in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _auth(settings: Settings) -> Any:
    if settings.access_key_id and settings.access_key_secret:
        if settings.security_token:
            return oss2.StsAuth(settings.access_key_id, settings.access_key_secret, settings.security_token)
        return oss2.Auth(settings.access_key_id, settings.access_key_secret)
    # Without credentials only public-read buckets are readable; OSS answers 403 (StoreError) otherwise.
    return oss2.AnonymousAuth()


# --- ICE snapshot source ----------------------------------------------------------------------------------


class SourceStore:
    """Reads ICE's snapshot objects from endpoints named in events (allow-listed)."""

    def __init__(self, settings: Settings) -> None:
        self.policy = EndpointPolicy.from_settings(settings)
        self._auth = _auth(settings)
        self._timeout = settings.oss_timeout_seconds
        self._session = _session(settings)
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
                    is_path_style=_path_style(url),
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
        with _translated(where, "GetObject"), b.get_object(key) as r:
            declared = r.content_length
            if declared is not None and declared > max_bytes:
                # Leaving the with-block closes the response without reading the body.
                raise TooLarge(f"{where}: {declared} bytes exceeds the {max_bytes}-byte limit")
            # Pieces joined once at the end: growing a bytearray and copying it out cost ~0.25 ms per 300 KB
            # frame (each large reallocation takes fresh pages from the kernel), b"".join about 6 us.
            chunks: list[bytes] = []
            size = 0
            # 256 KiB reads, not the 8 KiB the iterator yields: a quarter less CPU for a 300 KB frame
            # (bench/pipeline.py).
            while chunk := r.read(_READ_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"{where}: more than {max_bytes} bytes")
            if declared is not None and size != declared:
                raise Transient(f"{where}: truncated transfer ({size} of {declared} bytes)")
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            # Over the whole body, not as it streams: one pass in C instead of one call per read.
            _check_crc(where, r.server_crc, data)
            return FetchedObject(
                data=data,
                etag=r.etag or "",
                size=size,
                last_modified_ms=_ms(r.last_modified),
                content_type=r.content_type,
            )

    def presign(self, endpoint: str, bucket: str, key: str, expires: int) -> str:
        """A GET URL valid for ``expires`` seconds, signed locally (no request) for a browser to follow.

        It points at the mapped address, except a VPC ``-internal`` one that browsers cannot reach: then at
        the job's public endpoint (the V1 signature does not cover the host, so either works).
        """
        b = self._bucket(endpoint, bucket)
        if "-internal." in (urlsplit(b.endpoint).hostname or ""):
            host = self.policy.normalize(endpoint).replace("-internal.", ".")
            b = oss2.Bucket(self._auth, f"https://{host}", bucket)
        return str(b.sign_url("GET", key, expires, slash_safe=True))

    def head(self, endpoint: str, bucket: str, key: str) -> ObjectMeta:
        b = self._bucket(endpoint, bucket)
        with _translated(f"oss://{bucket}/{key}", "HeadObject"):
            r = b.head_object(key)
            return ObjectMeta(
                etag=r.etag or "", size=int(r.content_length or 0), last_modified_ms=_ms(r.last_modified)
            )


# --- thumbnail stores -------------------------------------------------------------------------------------


class ThumbnailStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, keys: list[str]) -> None: ...

    def exists(self, key: str) -> bool: ...

    def presign(self, key: str, expires: int) -> str | None: ...

    def delete_older_than(self, prefix: str, before: float, *, dry_run: bool = False) -> int:
        """Objects under ``prefix`` last modified before ``before`` (Unix seconds): deleted, or only counted."""
        ...


class FileThumbnailStore:
    """Thumbnails in a local folder. Keys are relative, "/"-separated paths."""

    redirect = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    def path_for(self, key: str) -> Path:
        """The file for ``key``; ValueError for keys that could escape the root."""
        parts = key.replace("\\", "/").split("/")
        if (
            not key
            or "\x00" in key
            or key.startswith(("/", "\\"))
            or any(p in ("", ".", "..") for p in parts)
            or re.match(r"^[A-Za-z]:", key)
        ):
            raise ValueError(f"invalid thumbnail key {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # content_type is not stored: the file name's extension says it when the file is served.
        path = self.path_for(key)
        # No mkstemp (its retry loop over random names) and no mkdir unless the open says the folder is
        # missing: together half of this function's time per frame (py-spy, bench/pipeline.py). The random
        # part keeps names apart across hosts and containers sharing the folder (same pids, same keys).
        tmp = f"{path.parent}{os.sep}.tmp-{os.urandom(6).hex()}-{path.name}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        for attempt in range(3):
            try:
                fd = os.open(tmp, flags, 0o644)
                break
            except FileNotFoundError:
                # A new folder, or one a concurrent delete() just removed as empty: make it and try again.
                if attempt == 2:
                    raise
                path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # Readers see the old file or the new one, never a partial write.
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self.path_for(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise ObjectNotFound(f"thumbnail {key!r} not found") from e

    def delete(self, keys: list[str]) -> None:
        self._unlink([self.path_for(key) for key in keys])

    def _unlink(self, paths: list[Path]) -> None:
        folders = set()
        for path in paths:
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        # Folders emptied by the deletes go too (the older layout had one per snapshot): otherwise pruning
        # leaves an empty folder, an inode, behind for every snapshot it removes.
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            while folder != self.root and self.root in folder.parents:
                try:
                    folder.rmdir()
                except OSError:  # not empty (or already gone, or not ours to remove)
                    break
                folder = folder.parent

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def presign(self, key: str, expires: int) -> str | None:
        return None

    def delete_older_than(self, prefix: str, before: float, *, dry_run: bool = False) -> int:
        old: list[Path] = []
        # os.walk does not follow links; lstat dates a link itself, and unlink removes only the link. The
        # paths found are removed as they are, not turned back into keys (a name with a backslash would
        # become another path).
        for folder, _subfolders, names in os.walk(self.path_for(prefix.rstrip("/"))):
            for name in names:
                path = Path(folder, name)
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    if path.lstat().st_mtime < before:
                        old.append(path)
        if not dry_run:
            self._unlink(old)
        return len(old)


class OssThumbnailStore:
    """Thumbnails in our own OSS bucket under ``prefix``."""

    def __init__(self, bucket: Any, prefix: str = "", *, redirect: bool = False) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.redirect = redirect
        # See SourceStore: close the pooled sockets with the store rather than leave them to the GC.
        self._finalizer = weakref.finalize(self, bucket.session.close)

    def close(self) -> None:
        self._finalizer()

    def _key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise ValueError(f"invalid thumbnail key {key!r}")
        return self.prefix + key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        k = self._key(key)
        where = f"oss://{self.bucket.bucket_name}/{k}"
        with _translated(where, "PutObject"):
            r = self.bucket.put_object(k, data, headers={"Content-Type": content_type})
            _check_crc(where, r.crc, data, "crc mismatch after upload")

    def get(self, key: str) -> bytes:
        k = self._key(key)
        where = f"oss://{self.bucket.bucket_name}/{k}"
        with _translated(where), self.bucket.get_object(k) as r:
            data = bytes(r.read())
            _check_crc(where, r.server_crc, data)
        return data


    def delete(self, keys: list[str]) -> None:
        full = [self._key(k) for k in keys]
        for i in range(0, len(full), _BATCH):
            with _translated(f"oss://{self.bucket.bucket_name}/ (batch delete)"):
                self.bucket.batch_delete_objects(full[i : i + _BATCH])

    def exists(self, key: str) -> bool:
        k = self._key(key)
        with _translated(f"oss://{self.bucket.bucket_name}/{k}"):
            return bool(self.bucket.object_exists(k))

    def delete_older_than(self, prefix: str, before: float, *, dry_run: bool = False) -> int:
        full = self._key(prefix)
        with _translated(f"oss://{self.bucket.bucket_name}/{full} (list)", "ListObjectsV2"):
            old = [o.key[len(self.prefix):] for o in oss2.ObjectIteratorV2(self.bucket, prefix=full)
                   if o.last_modified < before]
        if not dry_run:
            self.delete(old)
        return len(old)

    def presign(self, key: str, expires: int) -> str | None:
        # slash_safe keeps "/" readable in the URL; the signature covers the decoded key either way.
        return str(self.bucket.sign_url("GET", self._key(key), expires, slash_safe=True))


def _truthy(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"thumbnail store URL: {name} must be a boolean, got {value!r}")


def thumbnail_store_from_url(url: str, settings: Settings) -> ThumbnailStore:
    """Build the thumbnail store named by RECEIVER_THUMBNAIL_STORE.

    - ``file:///abs/path``: that folder. ``file://rel/path`` and ``file:rel/path`` are relative to the
      working directory. The rest of the URL is taken literally (no percent-decoding), matching how config
      builds the default from a plain path.
    - ``oss://bucket/prefix?endpoint=host-or-url[&redirect=1]``: our own bucket. The endpoint goes through
      the endpoint map but not the allow-list (the operator configured it); a bare host means https.
      ``redirect`` tells the API to redirect to presigned URLs instead of proxying bytes.
    """
    if url.startswith("file:"):
        rest = url[len("file://") :] if url.startswith("file://") else url[len("file:") :]
        if not rest:
            raise ValueError(f"thumbnail store URL {url!r} has no path")
        return FileThumbnailStore(rest)
    if not url.startswith("oss://"):
        raise ValueError(f"thumbnail store URL {url!r}: scheme must be file:// or oss://")
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"thumbnail store URL {url!r} has no bucket (oss://bucket/prefix?endpoint=...)")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(params) - {"endpoint", "redirect"}
    if unknown:
        raise ValueError(f"thumbnail store URL {url!r}: unknown parameter(s) {', '.join(sorted(unknown))}")
    endpoint = params.get("endpoint", "").strip()
    if not endpoint:
        raise ValueError(f"thumbnail store URL {url!r} needs ?endpoint=host-or-url")
    if not (settings.access_key_id and settings.access_key_secret):
        raise ValueError("an oss:// thumbnail store needs ALIBABA_CLOUD_ACCESS_KEY_ID and _SECRET")
    policy = EndpointPolicy.from_settings(settings)
    try:
        host = policy.normalize(endpoint)
    except Rejected as e:
        raise ValueError(f"thumbnail store URL {url!r}: {e}") from None
    if host in policy.endpoint_map:
        base = policy.endpoint_map[host]
    elif "://" in endpoint:
        base = endpoint.rstrip("/")
    else:
        base = f"https://{endpoint.rstrip('/')}"
    session = _session(settings)
    try:
        bucket = oss2.Bucket(
            _auth(settings),
            base,
            parts.netloc,
            session=session,
            connect_timeout=settings.oss_timeout_seconds,
            is_path_style=_path_style(base),
            enable_crc=False,  # OssThumbnailStore checks with a faster CRC (see crc64)
        )
    except oss2.exceptions.ClientError as e:
        session.close()
        raise ValueError(f"thumbnail store URL {url!r}: {e}") from None
    return OssThumbnailStore(bucket, parts.path, redirect=_truthy("redirect", params.get("redirect", "")))
