"""What the OSS stores share over oss2: error translation, the CRC check, credentials and the session.

Every oss2 or transport failure leaves the stores as one of the receiver's own errors, chained with
``from`` (design/oss.md sections 2-4):

- NotFound (NoSuchKey, NoSuchBucket, a bare HEAD 404) -> ObjectNotFound
- 5xx, 429/408, RequestError (refused, timeouts), a broken or short transfer, CRC mismatch -> Transient
- anything else (403 AccessDenied/SignatureDoesNotMatch, 400 ...) -> StoreError

oss2 never retries single-object calls, so retrying Transient is the caller's job.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anycrc
import oss2

from receiver import metrics
from receiver.adapters.oss_transport import DirectSession, ProxiedSession, session_for
from receiver.config import Settings
from receiver.exceptions import ObjectNotFound, ReceiverError, StoreError, Transient

# CRC-64/XZ is what OSS sends as x-oss-hash-crc64ecma (oss.md section 5). The stores check it themselves
# (buckets are built with enable_crc=False) because oss2's own check builds a crcmod table in Python for
# every request and then runs a byte-at-a-time loop (see bench/RESULTS.md). The model is immutable and its
# calc() is thread-safe, so one serves every thread.
_CRC64 = anycrc.Model("CRC64-XZ")


def crc64(data: bytes | bytearray) -> int:
    return int(_CRC64.calc(data))


def check_crc(where: str, sent: int | None, data: bytes, what: str = "crc mismatch") -> None:
    """OSS's x-oss-hash-crc64ecma (when it sent one) against the bytes in hand; a mismatch is Transient."""
    if sent is not None and sent != crc64(data):
        raise Transient(f"{where}: {what}")


def session(settings: Settings) -> ProxiedSession | DirectSession:
    # One pool per store for all its buckets, sized for the worker threads so urllib3 does not discard
    # connections.
    return session_for(max(10, settings.workers * 2))


def auth(settings: Settings) -> Any:
    if settings.access_key_id and settings.access_key_secret:
        if settings.security_token:
            return oss2.StsAuth(settings.access_key_id, settings.access_key_secret, settings.security_token)
        return oss2.Auth(settings.access_key_id, settings.access_key_secret)
    # Without credentials only public-read buckets are readable; OSS answers 403 (StoreError) otherwise.
    return oss2.AnonymousAuth()


def path_style(url: str) -> bool:
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


def ms(unix_seconds: int | None) -> int | None:
    return None if unix_seconds is None else int(unix_seconds) * 1000


def translate(err: oss2.exceptions.OssError, where: str) -> ReceiverError:
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
def translated(where: str, op: str = "other") -> Iterator[None]:
    try:
        yield
    except oss2.exceptions.OssError as e:
        err = translate(e, where)
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
