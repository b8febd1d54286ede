"""The HTTP transport under oss2: its signed requests sent through urllib3 directly.

oss2 sends every request through ``requests.Session.request``: settings merges, hooks, cookie jars, URL
re-parsing, and three debug log lines formatted (header dicts included) whether or not debug is on: a large
share of a frame's GET (bench/pipeline.py, figures in bench/RESULTS.md). oss2 takes a ``Session`` whose
``do_request`` does the sending; this one hands the already signed request to a urllib3 pool (the library
requests itself sends with) and gives oss2 back the response interface it reads.

Same behaviour as oss2's own session where it matters: keep-alive pool per host, the timeout for connect and
each read, TLS verified against REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE or certifi's bundle (requests' order),
transport failures as ``oss2.exceptions.RequestError``. Differences, on purpose: redirects are not followed
(OSS does not redirect object requests; a 3xx is an error, not a hop to wherever Location says), and netrc
logins are not read. Environments with proxies keep oss2's requests session (``session_for``): requests'
proxy and NO_PROXY rules are not re-implemented here.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import certifi
import oss2
import urllib3

_ITER_CHUNK = 8 * 1024  # what oss2's own Response iterates in


def session_for(pool_size: int) -> ProxiedSession | DirectSession:
    """The oss2 session the stores use: the direct one, or oss2's requests session when proxies are set."""
    # NO_PROXY alone ("no") routes nothing through a proxy.
    if any(scheme != "no" for scheme in urllib.request.getproxies()):
        return ProxiedSession(pool_size=pool_size)
    return DirectSession(pool_size)


class ProxiedSession(oss2.Session):
    """oss2's own requests session, which applies the environment's proxies and NO_PROXY per request."""

    def close(self) -> None:
        self.session.close()


def _ca_bundle() -> str:
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()


class DirectSession(oss2.Session):
    def __init__(self, pool_size: int) -> None:
        # The parent's requests session stays for the one case below that urllib3 is not given.
        super().__init__(pool_size=pool_size)
        self.session.trust_env = False
        bundle = _ca_bundle()
        self.session.verify = bundle
        is_dir = os.path.isdir(bundle)
        self.pool = urllib3.PoolManager(num_pools=pool_size, maxsize=pool_size, block=False, retries=False,
                                        cert_reqs="CERT_REQUIRED", ca_certs=None if is_dir else bundle,
                                        ca_cert_dir=bundle if is_dir else None)

    def close(self) -> None:
        self.pool.clear()
        self.session.close()

    def do_request(self, req: Any, timeout: float) -> Any:
        if req.proxies or not (req.data is None or isinstance(req.data, bytes)):
            # Streamed bodies (files, iterators) need requests' chunked-upload handling; the stores only
            # ever send bytes.
            return super().do_request(req, timeout)
        url = req.url
        if req.params:
            # requests drops parameters whose value is None and encodes the rest like this.
            query = urlencode([(k, v) for k, v in req.params.items() if v is not None])
            url = f"{url}{'&' if '?' in url else '?'}{query}" if query else url
        # oss2 sets a header to None to mean "do not send it" (Accept-Encoding).
        headers = {k: v for k, v in req.headers.items() if v is not None}
        try:
            raw = self.pool.urlopen(req.method, url, body=req.data, headers=headers, preload_content=False,
                                    redirect=False, retries=False,
                                    timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            # ValueError: http.client refusing a header value, which requests reported as InvalidHeader.
            raise oss2.exceptions.RequestError(e) from e
        response = _Response(raw)
        if req.method == "HEAD":
            # No body, but oss2 never reads some HEAD answers (object_exists): release the connection now
            # rather than when the response is garbage-collected.
            response.read()
        return response


class _Response:
    """The interface oss2 reads a response through (``oss2.http.Response``'s), over a urllib3 response."""

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self._raw = raw
        self._consumed = False
        self.response = self  # oss2's results close through ``resp.response.close()``
        self.status = raw.status
        self.headers = raw.headers  # case-insensitive, like requests' CaseInsensitiveDict
        self.request_id = raw.headers.get("x-oss-request-id", "")

    def read(self, amt: int | None = None) -> bytes:
        try:
            data: bytes = self._raw.read(amt)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            # A connection dropped or timed out mid-body, or a body shorter than its Content-Length.
            raise oss2.exceptions.RequestError(e) from e
        if amt is None or not data:
            self._consumed = True
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(_ITER_CHUNK):
            yield chunk

    def close(self) -> None:
        # As requests does: a body not read to the end closes its connection instead of returning it to the
        # pool with bytes still in flight.
        if not self._consumed:
            self._raw.close()
        self._raw.release_conn()
