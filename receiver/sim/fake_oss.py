"""A small in-process OSS server that accepts oss2's real signed requests (design/oss.md sections 7-9).

Path style only (``http://127.0.0.1:PORT/<bucket>/<key>``), which is what oss2 uses for an IP endpoint.
Every request is authenticated the way OSS does it (V1 header, V1 presigned URL, V4 header, V4 presigned
URL), so a test that passes here exercises the exact bytes oss2 signs. Responses carry the headers and XML
shapes oss2's parsers need: no XML namespace, RFC 1123 ``Last-Modified``, quoted upper-case MD5 ETag,
decimal CRC64 and a request id; HEAD errors travel base64-encoded in ``x-oss-err``.

Third-party servers answer less than OSS does; switches reproduce them: ``omit_crc`` (no
``x-oss-hash-crc64ecma``), ``chunked`` (object bodies without ``Content-Length``), ``put(..., multipart=True)``
(a multipart-style ETag that is not the MD5), ``break_listing_next`` (a listing oss2 cannot parse) and
``corrupt_body_next`` (bytes damaged on the way, headers intact).

Accounts: every key and bucket belongs to an account uid (the constructor's keys and buckets made without an
owner to ``DEFAULT_UID``); a signed request for another account's bucket gets 403 ``AccessDenied``, as with no
bucket policy granting it (public-read buckets stay readable by anyone). Temporary keys (``STS.*``) resolve
through the ``StsAuthority`` given as ``sts``, their token in ``x-oss-security-token`` (header, V1 and V4;
signed as any ``x-oss-`` header) or in the presigned URL (``security-token`` V1, ``x-oss-security-token`` V4).
An expired token gets 403 ``SecurityTokenExpired`` ("The security token you provided has expired.", OSS EC
0002-00000007), a wrong one 403 ``InvalidSecurityToken`` (EC 0002-00000006), a temporary key without a token
403 ``InvalidAccessKeyId``. Each logged request names its ``uid`` and ``credential`` ("access_key" | "sts").

Not emulated: virtual-hosted addressing, V1 ``ListObjects`` (only V2), multipart, ACL calls, versioning,
``x-oss-process`` (answered 400 so image processing stays a local, tested code path).

The signing helpers (``v1_string_to_sign``, ``v4_canonical_request`` ...) are public so tests can check them
against the fixed vectors in oss.md section 7.5.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import hashlib
import hmac
import socket
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import crcmod

from receiver.sim.fake_sts import DEFAULT_UID, KeyAccounts, StsAuthority, TokenRefused
from receiver.sim.loopback import LoopbackServer

__all__ = [
    "FakeOss",
    "V1_SUBRESOURCES",
    "crc64",
    "v1_signature",
    "v1_string_to_sign",
    "v4_canonical_request",
    "v4_signature",
    "v4_string_to_sign",
]

# oss2's ProviderAuth._subresource_key_set: only these query parameters are part of a V1 signature.
_SUBRESOURCE_NAMES = """response-content-type response-content-language response-cache-control logging
    response-content-encoding acl uploadId uploads partNumber group link delete website location objectInfo
    objectMeta response-expires response-content-disposition cors lifecycle restore qos referer stat
    bucketInfo append position security-token live comp status vod startTime endTime x-oss-process symlink
    callback callback-var tagging encryption versions versioning versionId policy requestPayment
    x-oss-traffic-limit qosInfo asyncFetch x-oss-request-payer sequential inventory inventoryId
    continuation-token worm wormId wormExtend replication replicationLocation replicationProgress
    transferAcceleration cname metaQuery x-oss-ac-source-ip x-oss-ac-subnet-mask x-oss-ac-vpc-id
    x-oss-ac-forward-allow resourceGroup style styleName x-oss-async-process regionList
    x-oss-write-get-object-response bucketArchiveDirectRead httpsConfig redundancyTransition
    x-oss-target-redundancy-type x-oss-redundancy-transition-taskid accessPoint accessPointPolicy
    publicAccessBlock x-oss-access-point-name requesterQosInfo qosRequester resourcePoolInfo resourcePool
    resourcePoolBuckets"""
V1_SUBRESOURCES = frozenset(_SUBRESOURCE_NAMES.split())

_MAX_SKEW = 15 * 60  # seconds; OSS rejects header-signed requests whose date is further off
_V4_ALGO = "OSS4-HMAC-SHA256"
_crc64_fun = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)


def crc64(data: bytes) -> int:
    """CRC-64/XZ as OSS sends it in ``x-oss-hash-crc64ecma``."""
    return int(_crc64_fun(data))


# --- signatures -------------------------------------------------------------------------------------------


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v.strip() for k, v in headers.items()}


def v1_string_to_sign(
    method: str,
    headers: Mapping[str, str],
    bucket: str | None,
    key: str | None,
    query: Sequence[tuple[str, str]] = (),
    date: str | None = None,
) -> str:
    """V1 StringToSign; ``date`` overrides the Date line (presigned URLs put ``Expires`` there)."""
    h = _lower(headers)
    date_line = date if date is not None else (h.get("x-oss-date") or h.get("date", ""))
    canon = "".join(f"{k}:{v}\n" for k, v in sorted((k, v) for k, v in h.items() if k.startswith("x-oss-")))
    resource = f"/{bucket}/{key or ''}" if bucket else "/"
    sub = sorted((k, v) for k, v in query if k in V1_SUBRESOURCES)
    if sub:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in sub)
    return "\n".join(
        [method, h.get("content-md5", ""), h.get("content-type", ""), date_line, canon + resource]
    )


def v1_signature(secret: str, string_to_sign: str) -> str:
    digest = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _uri_encode(text: str, keep_slash: bool) -> str:
    # quote() keeps exactly A-Z a-z 0-9 - _ . ~ plus `safe`, and writes upper-case hex: the V4 rule.
    return quote(text, safe="/" if keep_slash else "")


def v4_canonical_request(
    method: str,
    bucket: str | None,
    key: str | None,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    additional_headers: Iterable[str] = (),
) -> str:
    h = _lower(headers)
    additional = sorted({a.strip().lower() for a in additional_headers if a.strip()})
    uri = _uri_encode(f"/{bucket}/{key or ''}" if bucket else "/", keep_slash=True)
    encoded = sorted({_uri_encode(k, False): _uri_encode(v, False) for k, v in query}.items())
    canon_query = "&".join(f"{k}={v}" if v else k for k, v in encoded)
    signed = sorted(
        (k, v)
        for k, v in h.items()
        if k.startswith("x-oss-") or k in ("content-type", "content-md5") or k in additional
    )
    canon_headers = "".join(f"{k}:{v}\n" for k, v in signed)
    payload = h.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD")
    return "\n".join([method, uri, canon_query, canon_headers, ";".join(additional), payload])


def v4_string_to_sign(date_time: str, region: str, canonical_request: str, product: str = "oss") -> str:
    scope = f"{date_time[:8]}/{region}/{product}/aliyun_v4_request"
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return f"{_V4_ALGO}\n{date_time}\n{scope}\n{digest}"


def v4_signature(secret: str, date_time: str, region: str, string_to_sign: str, product: str = "oss") -> str:
    key = ("aliyun_v4" + secret).encode()
    for part in (date_time[:8], region, product, "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


# --- server state -----------------------------------------------------------------------------------------


@dataclass
class _Object:
    data: bytes
    etag: str
    last_modified: float
    content_type: str
    crc: int
    meta: dict[str, str] = field(default_factory=dict)
    object_type: str = "Normal"


@dataclass
class _Bucket:
    public_read: bool = False
    owner: str = DEFAULT_UID
    objects: dict[str, _Object] = field(default_factory=dict)


@dataclass
class _Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncate: bool = False  # send half the body under the full Content-Length, then drop the connection
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length


class _Denied(Exception):
    def __init__(self, code: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _iso_date(ts: float) -> str:
    # oss2 accepts exactly this shape in listings (anything else raises ValueError).
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def _parse_query(raw: str) -> list[tuple[str, str]]:
    # requests form-encodes query values (space -> "+", "+" -> %2B), so "+" must decode to a space here,
    # unlike in the path. Blank values (objectMeta=, delimiter=) matter to both signatures.
    return parse_qsl(raw, keep_blank_values=True)


def _xml(root: str, children: Iterable[tuple[str, str]]) -> bytes:
    inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in children)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>{inner}</{root}>'.encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeOss

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a timeout, an early close) is normal for a server, not a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like OSS; oss2 pools connections
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's delayed ACK.
    disable_nagle_algorithm = True
    server_version = "AliyunOSS"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self._fake().track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._fake().track(self.connection, add=False)

    def _fake(self) -> FakeOss:
        return cast(_Server, self.server).fake

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the fake's request log replaces stderr noise

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        reply = self._fake().dispatch(self.command, self.path, dict(self.headers.items()), body)
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if reply.truncate:
            self.send_header("Connection", "close")
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command != "HEAD" and reply.chunked:
            body = reply.body[: len(reply.body) // 2] if reply.truncate else reply.body
            for i in range(0, len(body), 16384):
                piece = body[i : i + 16384]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if not reply.truncate:
                self.wfile.write(b"0\r\n\r\n")
        elif self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body[: len(reply.body) // 2] if reply.truncate else reply.body)
        if reply.truncate:
            self.wfile.flush()
            self.close_connection = True

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle


class FakeOss(KeyAccounts, LoopbackServer):
    """In-memory OSS. Use as a context manager or call start()/stop()."""

    thread_name = "fake-oss"

    def __init__(
        self,
        access_keys: dict[str, str] | None = None,
        region: str = "cn-shanghai",
        sts: StsAuthority | None = None,
    ) -> None:
        super().__init__()
        self._init_keys({"AKIDEXAMPLE": "SECRETEXAMPLE"} if access_keys is None else access_keys, sts)
        self.region = region
        self.latency = 0.0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._failures: dict[str, list[tuple[int, str]]] = {}
        self._corrupt_crc = 0
        self._truncate = 0
        self._corrupt_body = 0
        self._broken_listings: list[str] = []
        # What some third-party servers do: no x-oss-hash-crc64ecma anywhere; object bodies sent chunked,
        # without Content-Length.
        self.omit_crc = False
        self.chunked = False
        self._conns: set[socket.socket] = set()
        self.connections_accepted = 0  # TCP connections so far: tells whether clients reuse keep-alive ones

    # lifecycle

    def make_server(self) -> ThreadingHTTPServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        return server

    def before_close(self) -> None:
        # Pooled keep-alive connections would otherwise keep being served after stop().
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
                self.connections_accepted += 1
            else:
                self._conns.discard(conn)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # direct state access (no HTTP, no auth)

    def create_bucket(self, name: str, *, public_read: bool = False, owner_uid: str = DEFAULT_UID) -> None:
        """Create (or re-own) a bucket; ``put`` creates missing buckets for DEFAULT_UID."""
        with self._lock:
            b = self._buckets.setdefault(name, _Bucket())
            b.public_read, b.owner = public_read, owner_uid

    def bucket_owner(self, name: str) -> str | None:
        with self._lock:
            b = self._buckets.get(name)
            return b.owner if b else None

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        last_modified: float | None = None,
        content_type: str = "image/jpeg",
        multipart: bool = False,
    ) -> str:
        """Store an object (creating the bucket if needed); returns the ETag without quotes.

        ``multipart``: as a one-part multipart upload leaves it: ETag ``<MD5 of the part MD5s>-1`` (not the
        MD5 of the bytes) and ``x-oss-object-type: Multipart``.
        """
        obj = self._make_object(data, content_type, {}, last_modified)
        if multipart:
            part_md5 = hashlib.md5(data, usedforsecurity=False).digest()
            obj.etag = hashlib.md5(part_md5, usedforsecurity=False).hexdigest().upper() + "-1"
            obj.object_type = "Multipart"
        with self._lock:
            self._buckets.setdefault(bucket, _Bucket()).objects[key] = obj
        return obj.etag

    def get(self, bucket: str, key: str) -> bytes | None:
        with self._lock:
            b = self._buckets.get(bucket)
            obj = b.objects.get(key) if b else None
            return obj.data if obj else None

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            b = self._buckets.get(bucket)
            if b:
                b.objects.pop(key, None)

    def keys(self, bucket: str) -> list[str]:
        with self._lock:
            b = self._buckets.get(bucket)
            return sorted(b.objects) if b else []

    # fault injection

    def fail_next(self, method: str, n: int, status: int = 500, code: str = "InternalError",
                  key: str | None = None) -> None:
        """Answer the next ``n`` authenticated ``method`` requests (for ``key`` only, if given) with an error
        instead of serving them."""
        with self._lock:
            self._failures.setdefault(method.upper() if key is None else f"{method.upper()} {key}", []).extend(
                [(status, code)] * n)

    def corrupt_crc_next(self, n: int) -> None:
        """Send a wrong ``x-oss-hash-crc64ecma`` in the next ``n`` GET or PUT answers."""
        with self._lock:
            self._corrupt_crc += n

    def truncate_next(self, n: int) -> None:
        with self._lock:
            self._truncate += n

    def corrupt_body_next(self, n: int) -> None:
        """Flip one byte of the body in the next ``n`` GET answers; headers (CRC, ETag, length) stay right."""
        with self._lock:
            self._corrupt_body += n

    def break_listing_next(self, n: int, how: str = "namespace") -> None:
        """Answer the next ``n`` ListObjectsV2 requests (after authentication) with a 200 oss2 cannot parse.

        ``namespace``: the S3 shape some servers send (an ``xmlns`` on the root), so oss2 finds none of its
        elements and raises RuntimeError; ``garbage``: not XML at all (a ParseError inside oss2).
        """
        if how not in ("namespace", "garbage"):
            raise ValueError(f"how must be 'namespace' or 'garbage', got {how!r}")
        with self._lock:
            self._broken_listings.extend([how] * n)

    def fetched(self, bucket: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        """Object reads (GET/HEAD on a key) seen so far, optionally filtered."""
        with self._lock:
            log = list(self.requests)
        return [
            r
            for r in log
            if r["method"] in ("GET", "HEAD")
            and r["key"]
            and (bucket is None or r["bucket"] == bucket)
            and (key is None or r["key"] == key)
        ]

    def fetched_keys(self, bucket: str | None = None) -> list[str]:
        """Keys of the object GETs answered with data (200/206), in order: what a client actually fetched."""
        with self._lock:
            log = list(self.requests)
        return [
            r["key"]
            for r in log
            if r["method"] == "GET"
            and r["key"]
            and r["status"] in (200, 206)
            and (bucket is None or r["bucket"] == bucket)
        ]

    # request handling

    @staticmethod
    def _make_object(
        data: bytes, content_type: str, meta: dict[str, str], last_modified: float | None
    ) -> _Object:
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest().upper()
        ts = time.time() if last_modified is None else last_modified
        return _Object(data, etag, float(int(ts)), content_type, crc64(data), meta)

    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Reply:
        if self.latency:
            time.sleep(self.latency)
        parts = urlsplit(raw_path)
        bucket, _, raw_key = parts.path.lstrip("/").partition("/")
        key = unquote(raw_key)
        query = _parse_query(parts.query)
        request_id = uuid.uuid4().hex[:24].upper()
        auth, uid, credential = "anon", None, None
        try:
            auth, ak, token = self._authenticate(method, headers, bucket, key, query)
            if ak is not None:
                uid, credential = self._identify(ak, token)
                self._check_owner(method, bucket, key, uid)
            reply = (self._injected(f"{method} {key}") or self._injected(method)
                     or self._route(method, bucket, key, query, headers, body))
        except _Denied as e:
            status = 400 if e.code in ("InvalidArgument", "InvalidRequest") else 403
            reply = self._error(status, e.code, e.message, **e.details)
        reply.headers["x-oss-request-id"] = request_id
        if reply.status >= 400:
            self._finish_error(method, reply, request_id, bucket, key)
        if not reply.chunked:
            reply.headers.setdefault("Content-Length", str(len(reply.body)))
        with self._lock:
            self.requests.append(
                {
                    "method": method,
                    "bucket": bucket or None,
                    "key": key or None,
                    "query": dict(query),
                    "status": reply.status,
                    "auth": auth,
                    "uid": uid,
                    "credential": credential,
                    "request_id": request_id,
                }
            )
        return reply

    def _injected(self, which: str) -> _Reply | None:
        with self._lock:
            queue = self._failures.get(which)
            if not queue:
                return None
            status, code = queue.pop(0)
        return self._error(status, code, "Injected failure.")

    def _error(self, status: int, code: str, message: str, **details: str) -> _Reply:
        children = [("Code", code), ("Message", message), *details.items()]
        return _Reply(status, {"Content-Type": "application/xml"}, _xml("Error", children))

    def _finish_error(self, method: str, reply: _Reply, request_id: str, bucket: str, key: str) -> None:
        # RequestId/HostId are only known here; rebuild the XML with them, and for HEAD move it to x-oss-err
        # because a HEAD response has no body and oss2 would otherwise see a code-less NotFound.
        root = ET.fromstring(reply.body)
        children = [(c.tag, c.text or "") for c in root]
        children += [("RequestId", request_id), ("HostId", self.host)]
        if key and not any(t == "Key" for t, _ in children):
            children.append(("Key", key))
        xml = _xml("Error", children)
        if method == "HEAD":
            reply.headers["x-oss-err"] = base64.b64encode(xml).decode()
            reply.body = b""
            reply.headers["Content-Length"] = "0"
        else:
            reply.body = xml

    # auth

    def _secret(self, ak: str) -> str:
        secret = self.access_keys.get(ak)
        if secret is None and self.sts is not None:
            temp = self.sts.lookup(ak)
            secret = temp.access_key_secret if temp else None
        if secret is None:
            raise _Denied(
                "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist.", OSSAccessKeyId=ak
            )
        return secret

    def _identify(self, ak: str, token: str | None) -> tuple[str, str]:
        """The account behind a key whose signature checked out; temporary keys need their live token."""
        owner = self._long_term_owner(ak)
        if owner is not None:
            return owner, "access_key"
        assert self.sts is not None  # _secret resolves temporary keys only through an authority
        try:
            return self.sts.check(ak, token), "sts"
        except TokenRefused as e:
            if e.kind == "expired":
                raise _Denied(
                    "SecurityTokenExpired", "The security token you provided has expired.", EC="0002-00000007"
                ) from None
            if e.reason == "missing":
                raise _Denied(
                    "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist.", OSSAccessKeyId=ak
                ) from None
            raise _Denied(
                "InvalidSecurityToken", "The security token you provided is invalid.", EC="0002-00000006"
            ) from None

    def _check_owner(self, method: str, bucket: str, key: str, uid: str) -> None:
        with self._lock:
            b = self._buckets.get(bucket) if bucket else None
            if b is None or b.owner == uid or (b.public_read and key and method in ("GET", "HEAD")):
                return  # a missing bucket answers NoSuchBucket from _route, as OSS does for any caller
        raise _Denied("AccessDenied", "You have no right to access this object because of bucket acl.")

    def _authenticate(
        self, method: str, headers: Mapping[str, str], bucket: str, key: str, query: list[tuple[str, str]]
    ) -> tuple[str, str | None, str | None]:
        """(kind, access key id or None for anonymous, security token or None) of a request that verifies."""
        h = _lower(headers)
        q = dict(query)
        authz = h.get("authorization", "")
        url_v1 = "OSSAccessKeyId" in q or "Signature" in q
        url_v4 = "x-oss-signature-version" in q
        if authz and (url_v1 or url_v4):
            raise _Denied("InvalidArgument", "Authorization header and URL signature are both present.")
        header_token = h.get("x-oss-security-token")
        if authz.startswith("OSS "):
            return "v1", self._check_v1_header(method, headers, h, bucket, key, query, authz), header_token
        if authz.startswith(_V4_ALGO + " "):
            return "v4", self._check_v4(method, headers, bucket, key, query, authz=authz), header_token
        if authz:
            raise _Denied("InvalidArgument", "Unsupported Authorization type.")
        if url_v1:
            return "v1-url", self._check_v1_url(method, headers, bucket, key, query, q), q.get("security-token")
        if url_v4:
            ak = self._check_v4(method, headers, bucket, key, query, authz=None)
            return "v4-url", ak, q.get("x-oss-security-token")
        with self._lock:
            b = self._buckets.get(bucket)
            public = b is not None and b.public_read
        if not (public and key and method in ("GET", "HEAD")):
            raise _Denied("AccessDenied", "You have no right to access this object because of bucket acl.")
        return "anon", None, None

    def _check_v1_header(
        self,
        method: str,
        headers: Mapping[str, str],
        h: Mapping[str, str],
        bucket: str,
        key: str,
        query: list[tuple[str, str]],
        authz: str,
    ) -> str:
        ak, _, signature = authz[4:].strip().rpartition(":")
        secret = self._secret(ak)
        date = h.get("x-oss-date") or h.get("date", "")
        try:
            ts = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise _Denied("AccessDenied", "Invalid date format.") from None
        if abs(time.time() - ts) > _MAX_SKEW:
            raise _Denied(
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
                RequestTime=date,
            )
        sts = v1_string_to_sign(method, headers, bucket or None, key, query)
        self._compare(ak, signature, v1_signature(secret, sts), sts)
        return ak

    def _check_v1_url(
        self,
        method: str,
        headers: Mapping[str, str],
        bucket: str,
        key: str,
        query: list[tuple[str, str]],
        q: Mapping[str, str],
    ) -> str:
        ak, expires, signature = q.get("OSSAccessKeyId", ""), q.get("Expires", ""), q.get("Signature", "")
        secret = self._secret(ak)
        if not expires.isdigit():
            raise _Denied("AccessDenied", "Invalid Expires.")
        if time.time() > int(expires):
            raise _Denied("AccessDenied", "Request has expired.", Expires=expires)
        sts = v1_string_to_sign(method, headers, bucket or None, key, query, date=expires)
        self._compare(ak, signature, v1_signature(secret, sts), sts)
        return ak

    def _check_v4(
        self,
        method: str,
        headers: Mapping[str, str],
        bucket: str,
        key: str,
        query: list[tuple[str, str]],
        *,
        authz: str | None,
    ) -> str:
        h = _lower(headers)
        if authz is not None:
            fields: dict[str, str] = {}
            for item in authz[len(_V4_ALGO) :].split(","):
                name, _, value = item.strip().partition("=")
                fields[name] = value
            credential, signature = fields.get("Credential", ""), fields.get("Signature", "")
            additional = fields.get("AdditionalHeaders", "").split(";")
            date_time = h.get("x-oss-date", "")
            signed_query = query
        else:
            q = dict(query)
            credential, signature = q.get("x-oss-credential", ""), q.get("x-oss-signature", "")
            additional = q.get("x-oss-additional-headers", "").split(";")
            date_time = q.get("x-oss-date", "")
            signed_query = [(k, v) for k, v in query if k != "x-oss-signature"]
        try:
            ts = calendar.timegm(time.strptime(date_time, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            raise _Denied("AccessDenied", "Invalid x-oss-date.") from None
        ak, _, scope = credential.partition("/")
        secret = self._secret(ak)
        scope_parts = scope.split("/")
        if len(scope_parts) != 4 or scope_parts[0] != date_time[:8] or scope_parts[3] != "aliyun_v4_request":
            raise _Denied("AccessDenied", "Invalid credential scope.", Credential=credential)
        if scope_parts[1] != self.region or scope_parts[2] != "oss":
            raise _Denied(
                "AccessDenied", f"Invalid signing region/product in scope, expect {self.region}/oss."
            )
        if authz is None:
            expires = dict(query).get("x-oss-expires", "")
            if not expires.isdigit() or not 1 <= int(expires) <= 604800:
                raise _Denied("AccessDenied", "Invalid x-oss-expires.")
            if time.time() > ts + int(expires):
                raise _Denied("AccessDenied", "Request has expired.")
        elif abs(time.time() - ts) > _MAX_SKEW:
            raise _Denied(
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
                RequestTime=date_time,
            )
        canonical = v4_canonical_request(method, bucket or None, key, signed_query, headers, additional)
        sts = v4_string_to_sign(date_time, self.region, canonical)
        self._compare(ak, signature, v4_signature(secret, date_time, self.region, sts), sts)
        return ak

    @staticmethod
    def _compare(ak: str, provided: str, expected: str, sts: str) -> None:
        if not hmac.compare_digest(provided.encode(), expected.encode()):
            raise _Denied(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
                OSSAccessKeyId=ak,
                SignatureProvided=provided,
                StringToSign=sts,
            )

    # routing

    def _route(
        self,
        method: str,
        bucket: str,
        key: str,
        query: list[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Reply:
        q = dict(query)
        h = _lower(headers)
        if not bucket:
            return self._error(400, "NotImplemented", "Service operations are not supported by FakeOss.")
        with self._lock:
            b = self._buckets.get(bucket)
        if b is None:
            return self._error(404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=bucket)
        if not key:
            if method == "GET" and q.get("list-type") == "2":
                return self._list_v2(b, bucket, q)
            if method == "POST" and "delete" in q:
                return self._batch_delete(b, h, body)
            return self._error(400, "NotImplemented", f"FakeOss does not support {method} on a bucket.")
        if key.startswith(("/", "\\")) or len(key.encode()) > 1023:
            return self._error(400, "InvalidObjectName", "The specified object is not valid.")
        if "x-oss-process" in q:
            return self._error(400, "NotImplemented", "FakeOss does not emulate image processing.")
        if method in ("GET", "HEAD"):
            return self._read(b, key, q, h, head=method == "HEAD")
        if method == "PUT":
            return self._put(b, key, h, body)
        if method == "DELETE":
            with self._lock:
                b.objects.pop(key, None)
            return _Reply(204)
        return self._error(400, "NotImplemented", f"FakeOss does not support {method} on an object.")

    def _read(
        self, b: _Bucket, key: str, q: Mapping[str, str], h: Mapping[str, str], *, head: bool
    ) -> _Reply:
        with self._lock:
            obj = b.objects.get(key)
        if obj is None:
            return self._error(404, "NoSuchKey", "The specified key does not exist.")
        base = {"ETag": f'"{obj.etag}"', "Last-Modified": _http_date(obj.last_modified)}
        if head and "objectMeta" in q:
            return _Reply(200, {**base, "Content-Length": str(len(obj.data))})
        crc = obj.crc
        truncate = corrupt = False
        if not head:
            with self._lock:
                if self._corrupt_crc:
                    self._corrupt_crc -= 1
                    crc ^= 0x1
                if self._truncate:
                    self._truncate -= 1
                    truncate = True
                if self._corrupt_body:
                    self._corrupt_body -= 1
                    corrupt = True
        headers = {
            **base,
            "Content-Type": obj.content_type,
            "Accept-Ranges": "bytes",
            "x-oss-object-type": obj.object_type,
            "x-oss-storage-class": "Standard",
            **({} if self.omit_crc else {"x-oss-hash-crc64ecma": str(crc)}),
            **{f"x-oss-meta-{k}": v for k, v in obj.meta.items()},
        }
        data, status = obj.data, 200
        if corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        rng = self._parse_range(h.get("range", ""), len(obj.data))
        if rng == "invalid":
            return self._error(416, "InvalidRange", "The requested range cannot be satisfied.")
        if isinstance(rng, tuple):
            start, end = rng
            data, status = obj.data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(obj.data)}"
        if self.chunked and not head:
            return _Reply(status, headers, data, truncate=truncate, chunked=True)
        headers["Content-Length"] = str(len(data))
        return _Reply(status, headers, b"" if head else data, truncate=truncate)

    @staticmethod
    def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
        """None: whole object (no or unparseable range, as OSS ignores those); "invalid": 416."""
        if not value.startswith("bytes=") or "," in value:
            return None
        first, sep, last = value[6:].strip().partition("-")
        if not sep or not (first.isdigit() or last.isdigit()):
            return None
        if not first:
            n = int(last)
            if n == 0 or size == 0:
                return "invalid"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last.isdigit() else size - 1
        if start >= size or end < start:
            return "invalid"
        return start, min(end, size - 1)

    def _put(self, b: _Bucket, key: str, h: Mapping[str, str], body: bytes) -> _Reply:
        md5 = h.get("content-md5")
        if md5 is not None and md5 != _content_md5(body):
            return self._error(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
        meta = {k[len("x-oss-meta-") :]: v for k, v in h.items() if k.startswith("x-oss-meta-")}
        obj = self._make_object(body, h.get("content-type") or "application/octet-stream", meta, None)
        crc = obj.crc
        with self._lock:
            b.objects[key] = obj
            if self._corrupt_crc:
                # Stored intact, answered wrong: what a client sees when the upload was damaged on the way.
                self._corrupt_crc -= 1
                crc ^= 0x1
        return _Reply(200, {"ETag": f'"{obj.etag}"', **({} if self.omit_crc else {"x-oss-hash-crc64ecma": str(crc)})})

    def _batch_delete(self, b: _Bucket, h: Mapping[str, str], body: bytes) -> _Reply:
        if h.get("content-md5") != _content_md5(body):
            return self._error(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return self._error(400, "MalformedXML", "The XML you provided was not well-formed.")
        keys = [node.findtext("Key") or "" for node in root.findall("Object")]
        if not keys or len(keys) > 1000:
            return self._error(400, "MalformedXML", "A batch delete takes 1 to 1000 keys.")
        quiet = (root.findtext("Quiet") or "false").strip().lower() == "true"
        with self._lock:
            for k in keys:
                b.objects.pop(k, None)
        deleted = "" if quiet else "".join(f"<Deleted><Key>{quote(k, safe='')}</Key></Deleted>" for k in keys)
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<DeleteResult>{deleted}<EncodingType>url</EncodingType></DeleteResult>"
        )
        return _Reply(200, {"Content-Type": "application/xml"}, xml.encode())

    def _list_v2(self, b: _Bucket, bucket: str, q: Mapping[str, str]) -> _Reply:
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        token, start_after = q.get("continuation-token", ""), q.get("start-after", "")
        raw_max = q.get("max-keys") or "100"
        if not raw_max.isdigit() or not 1 <= int(raw_max) <= 1000:
            return self._error(400, "InvalidArgument", "max-keys must be between 1 and 1000.")
        max_keys = int(raw_max)
        url = q.get("encoding-type") == "url"

        def enc(s: str) -> str:
            return escape(quote(s, safe="") if url else s)

        with self._lock:
            broken = self._broken_listings.pop(0) if self._broken_listings else None
        if broken == "garbage":
            return _Reply(200, {"Content-Type": "application/xml"}, b"<html><body>502 Bad Gateway</body>")
        marker = max(token, start_after)
        with self._lock:
            objects = sorted(b.objects.items())
        # The token is the last name returned; when that was a common prefix, its keys were all covered.
        skip_prefix = token if delimiter and token.endswith(delimiter) else None
        entries: list[tuple[str, _Object | None]] = []
        seen: set[str] = set()
        for k, obj in objects:
            if not k.startswith(prefix) or k <= marker or (skip_prefix and k.startswith(skip_prefix)):
                continue
            cut = k.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = k[: cut + len(delimiter)]
                if common not in seen:
                    seen.add(common)
                    entries.append((common, None))
                continue
            entries.append((k, obj))
        page, truncated = entries[:max_keys], len(entries) > max_keys
        parts = [
            f"<Name>{escape(bucket)}</Name><Prefix>{enc(prefix)}</Prefix><MaxKeys>{max_keys}</MaxKeys>",
            f"<Delimiter>{enc(delimiter)}</Delimiter>",
            f"<StartAfter>{enc(start_after)}</StartAfter>" if start_after else "",
            f"<ContinuationToken>{enc(token)}</ContinuationToken>" if token else "",
            "<EncodingType>url</EncodingType>" if url else "",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
            f"<NextContinuationToken>{enc(page[-1][0])}</NextContinuationToken>" if truncated else "",
            f"<KeyCount>{len(page)}</KeyCount>",
        ]
        for name, o in page:
            if o is None:
                parts.append(f"<CommonPrefixes><Prefix>{enc(name)}</Prefix></CommonPrefixes>")
            else:
                parts.append(
                    f"<Contents><Key>{enc(name)}</Key><LastModified>{_iso_date(o.last_modified)}</LastModified>"
                    f'<ETag>"{o.etag}"</ETag><Type>Normal</Type><Size>{len(o.data)}</Size>'
                    "<StorageClass>Standard</StorageClass></Contents>"
                )
        ns = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' if broken == "namespace" else ""
        xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult{ns}>{"".join(parts)}</ListBucketResult>'
        return _Reply(200, {"Content-Type": "application/xml"}, xml.encode())
