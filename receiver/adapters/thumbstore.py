"""Where thumbnails live: a local folder or our own OSS bucket, chosen by RECEIVER_THUMBNAIL_STORE."""

from __future__ import annotations

import contextlib
import os
import re
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import oss2

from receiver.adapters.base import ThumbnailStore
from receiver.adapters.credentials import AccountCredential, oss_auth
from receiver.adapters.oss_common import (
    auth,
    browser_bucket,
    check_crc,
    count_integrity,
    path_style,
    session,
    translated,
    verify_body,
)
from receiver.adapters.oss_policy import EndpointPolicy
from receiver.config import Settings
from receiver.exceptions import ObjectNotFound, Rejected

_BATCH = 1000  # OSS's per-request limit for batch delete


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
        # missing: both showed up in profiles of the per-frame path (bench/pipeline.py). The random part
        # keeps names apart across hosts and containers sharing the folder (same pids, same keys).
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

    def delete_prefix(self, prefix: str, *, dry_run: bool = False) -> int:
        found: list[Path] = []
        for folder, _subfolders, names in os.walk(self.path_for(prefix.rstrip("/"))):
            found.extend(Path(folder, name) for name in names)
        if not dry_run:
            self._unlink(found)
        return len(found)

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

    def __init__(self, bucket: Any, prefix: str = "", *, redirect: bool = False, host: str | None = None) -> None:
        """``host``: the endpoint host as configured (before the endpoint map), for browser_bucket."""
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.redirect = redirect
        # Redirects send browsers to the public host when the configured one is a VPC -internal endpoint,
        # the same rule (and function) as /original's presigned URLs.
        self._browser = browser_bucket(bucket, host or urlsplit(bucket.endpoint).hostname or "")
        # See OssSourceStore: close the pooled sockets with the store rather than leave them to the GC.
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
        with translated(where, "PutObject"):
            r = self.bucket.put_object(k, data, headers={"Content-Type": content_type})
            check_crc(where, r.crc, data, "crc mismatch after upload")

    def get(self, key: str) -> bytes:
        k = self._key(key)
        where = f"oss://{self.bucket.bucket_name}/{k}"
        with translated(where, "GetObject"), self.bucket.get_object(k) as r:
            data = bytes(r.read())
            check = verify_body(where, data, crc=r.server_crc, etag=r.etag, length=r.content_length,
                                headers=r.headers)
        count_integrity("GetObject", check)
        return data

    def delete(self, keys: list[str]) -> None:
        full = [self._key(k) for k in keys]
        for i in range(0, len(full), _BATCH):
            with translated(f"oss://{self.bucket.bucket_name}/ (batch delete)"):
                self.bucket.batch_delete_objects(full[i : i + _BATCH])

    def exists(self, key: str) -> bool:
        k = self._key(key)
        with translated(f"oss://{self.bucket.bucket_name}/{k}"):
            return bool(self.bucket.object_exists(k))

    def delete_prefix(self, prefix: str, *, dry_run: bool = False) -> int:
        full = self._key(prefix)
        with translated(f"oss://{self.bucket.bucket_name}/{full} (list)", "ListObjectsV2"):
            found = [o.key[len(self.prefix):] for o in oss2.ObjectIteratorV2(self.bucket, prefix=full)]
        if not dry_run:
            self.delete(found)
        return len(found)

    def delete_older_than(self, prefix: str, before: float, *, dry_run: bool = False) -> int:
        full = self._key(prefix)
        with translated(f"oss://{self.bucket.bucket_name}/{full} (list)", "ListObjectsV2"):
            old = [o.key[len(self.prefix):] for o in oss2.ObjectIteratorV2(self.bucket, prefix=full)
                   if o.last_modified < before]
        if not dry_run:
            self.delete(old)
        return len(old)

    def presign(self, key: str, expires: int) -> str | None:
        # slash_safe keeps "/" readable in the URL; the signature covers the decoded key either way.
        k = self._key(key)
        with translated(f"oss://{self.bucket.bucket_name}/{k} (presign)", None):
            return str(self._browser.sign_url("GET", k, expires, slash_safe=True))


def _truthy(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"thumbnail store URL: {name} must be a boolean, got {value!r}")


def thumbnail_store_from_url(url: str, settings: Settings,
                             credential: AccountCredential | None = None) -> ThumbnailStore:
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
    if credential is not None and credential.configured:
        # The receiver's own bucket, signed with its primary account's credentials (accounts.Accounts.primary):
        # every request and every presigned URL asks for the current key and token.
        store_auth = oss_auth(credential)
    elif settings.access_key_id and settings.access_key_secret:
        store_auth = auth(settings)
    else:
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
    oss_session = session(settings)
    try:
        bucket = oss2.Bucket(
            store_auth,
            base,
            parts.netloc,
            session=oss_session,
            connect_timeout=settings.oss_timeout_seconds,
            is_path_style=path_style(base),
            enable_crc=False,  # OssThumbnailStore checks with a faster CRC (see oss_common.crc64)
        )
    except oss2.exceptions.ClientError as e:
        oss_session.close()
        raise ValueError(f"thumbnail store URL {url!r}: {e}") from None
    return OssThumbnailStore(bucket, parts.path, redirect=_truthy("redirect", params.get("redirect", "")), host=host)
