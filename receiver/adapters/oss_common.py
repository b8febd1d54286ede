"""What the OSS stores share over oss2: error translation, integrity checks, credentials, the session and
the URLs browsers are sent to.

Every oss2 call of the adapters runs inside ``translated()``, so nothing of oss2's leaves them: each failure
becomes one of the receiver's own errors, chained with ``from`` (design/oss.md sections 2-4):

- NotFound (NoSuchKey, NoSuchBucket, a bare HEAD 404) -> ObjectNotFound
- 5xx, 429/408, RequestError (refused, timeouts), InconsistentError, a broken or short transfer, a CRC, MD5
  or length mismatch -> Transient
- an answer oss2 cannot parse: whatever it raises from its own code while reading one (RuntimeError "parse
  xml: ... could not be found", ValueError from int() or a date, xml ParseError, KeyError ...) -> Transient
  (a cut or proxied body reads as garbage too; a server that always answers so fails after the retries,
  with the reason kept)
- any other OssError (403 AccessDenied/SignatureDoesNotMatch, 400, ClientError ...) -> StoreError

oss2 never retries single-object calls, so retrying Transient is the caller's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree
from xml.parsers.expat import ExpatError

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


# A single-PUT object's ETag is the MD5 of its bytes (32 hex digits); a multipart or appendable object's is
# not (multipart ones look like "<hex>-<parts>"), and neither is anything else a server may send.
_MD5_ETAG = re.compile(r"[0-9A-Fa-f]{32}")


def verify_body(
    where: str,
    data: bytes,
    *,
    crc: int | None,
    etag: str | None,
    length: int | None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Check a whole body against the strongest evidence the answer carries and return which check passed.

    CRC-64 (x-oss-hash-crc64ecma) when sent; else the ETag when it is a plain MD5 (a single PUT: 32 hex
    digits, and no x-oss-object-type other than Normal); else the Content-Length; else "none" (a chunked
    answer with neither: nothing to check against). A mismatch is Transient: the next fetch may be intact.
    """
    if length is not None and len(data) != length:
        raise Transient(f"{where}: truncated transfer ({len(data)} of {length} bytes)")
    if crc is not None:
        check_crc(where, crc, data)
        return "crc64"
    object_type = (headers or {}).get("x-oss-object-type", "Normal") or "Normal"
    if etag and _MD5_ETAG.fullmatch(etag) and object_type.lower() == "normal":
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != etag.lower():
            raise Transient(f"{where}: md5 mismatch (ETag {etag})")
        return "md5"
    return "length" if length is not None else "none"


def count_integrity(op: str, check: str) -> None:
    """Which check a whole read passed, as receiver_external_calls{operation="<op>.integrity", outcome=check}."""
    metrics.count_call("oss", f"{op}.integrity", check)


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


def browser_bucket(bucket: Any, host: str) -> Any:
    """The bucket to sign URLs with that a browser will follow (a presigned GET, a redirect).

    ``host`` is the endpoint as configured or reported (a bare host); ``bucket`` talks to the address it maps
    to. When either is a VPC ``-internal`` host, which browsers cannot reach, the URL must name the public
    host instead: the same bucket at ``https://<host without -internal>``. The V1 signature does not cover
    the host, so the URL is valid there. Otherwise ``bucket`` itself (a mapped local address stays).
    """
    mapped = urlsplit(bucket.endpoint).hostname or ""
    if "-internal." not in host and "-internal." not in mapped:
        return bucket
    public = host.replace("-internal.", ".")
    with translated(f"oss://{bucket.bucket_name}/ (presign)", None):
        return oss2.Bucket(bucket.auth, f"https://{public}", bucket.bucket_name, session=bucket.session,
                           enable_crc=False)


def _raised_in_oss2(tb: TracebackType | None) -> bool:
    """Whether the innermost frame of oss2's or ours that raised is oss2's: a failure of the call, not a bug
    in ours (oss2 calls back into our transport, so a frame of oss2 further out proves nothing)."""
    owner = ""
    while tb is not None:
        top = str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
        if top in ("oss2", "receiver"):
            owner = top
        tb = tb.tb_next
    return owner == "oss2"


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
def translated(where: str, op: str | None = "other") -> Iterator[None]:
    """Run oss2 calls: any failure leaves as the receiver's own error; ``op`` names the call in
    receiver_external_calls (None: local work such as signing a URL, not counted)."""

    def count(error: str | None = None) -> None:
        if op is not None:
            metrics.count_call("oss", op, error)

    try:
        yield
    except oss2.exceptions.OssError as e:
        err = translate(e, where)
        count(err.code)
        raise err from e
    except OSError as e:
        # requests raises its own RequestException (an OSError) while a streamed body is read, outside
        # oss2's wrapping: a connection dropped mid-body or a read timeout.
        count(Transient.code)
        raise Transient(f"{where}: transfer failed: {e}") from e
    except ReceiverError as e:
        # Our own checks on the answer (size, truncation, CRC) fail the call too.
        count(e.code)
        raise
    except (RuntimeError, ValueError, LookupError, ElementTree.ParseError, ExpatError) as e:
        if not _raised_in_oss2(e.__traceback__):
            raise  # ours: a bug, not an OSS answer
        # oss2 parsing an answer it cannot read raises whatever its parser met (design/oss.md section 3):
        # RuntimeError for a missing element, ValueError for a bad number or date, ParseError for non-XML.
        count(Transient.code)
        text = " ".join(str(e).split())[:200]
        raise Transient(f"{where}: unreadable answer ({type(e).__name__}: {text})") from e
    else:
        count()
