"""Sending one webhook attempt (product.md 8): Standard Webhooks signing, a checked and pinned address, one
deadline for the whole attempt, no redirects.

Why a small HTTP/1.1 client over a socket rather than urllib3 or requests: an attempt must end within
``TIMEOUT`` seconds whatever the subscriber does (a server that sends one header byte every few seconds
keeps a library's per-read timeout happy forever), it must connect to the address ``check_url`` approved
(not resolve the name again), while TLS still verifies the certificate for the URL's host name (SNI), and it
needs nothing of the answer but its status line. Each socket operation here gets the time left, so the
attempt cannot outlive its deadline. Proxies from the environment are not used: they would move the
connection to an address nobody checked.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import certifi
from standardwebhooks.webhooks import Webhook

from receiver.adapters.webhook_addresses import RefusedUrl, Resolver, Target, check_url

TIMEOUT = 10.0  # seconds, the whole attempt: resolving, connecting, TLS, sending, reading the status line
USER_AGENT = "receiver-webhooks/1"
MAX_STATUS_LINE = 8192


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to: ``ok`` for any 2xx; otherwise the status (if one came back) and why."""

    ok: bool
    status_code: int | None = None
    error: str | None = None


def signed_headers(secret: str, message_id: str, body: bytes, now: dt.datetime) -> dict[str, str]:
    """The Standard Webhooks headers: webhook-id, webhook-timestamp, webhook-signature (v1, HMAC-SHA256)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }


def system_resolver(timeout: float) -> Resolver:
    """getaddrinfo, bounded: it has no timeout of its own, so it runs in a thread we stop waiting for."""

    def resolve(host: str, port: int) -> Sequence[str]:
        out: list[str] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                out.extend(dict.fromkeys(str(info[4][0]) for info in infos))
            except OSError as e:
                failure.append(e)

        t = threading.Thread(target=run, name="receiver-webhook-dns", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise OSError(f"no answer from DNS within {timeout:g} s")
        if failure:
            raise OSError(str(failure[0]))
        return out

    return resolve


@cache
def default_tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


class WebhookSender:
    """Checks, signs and sends one attempt; never raises for anything the subscriber or network does."""

    def __init__(self, *, allow_private: bool, resolver: Resolver | None = None,
                 tls: ssl.SSLContext | None = None, timeout: float = TIMEOUT) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self.tls = tls
        self.timeout = timeout

    def send(self, url: str, secret: str, message_id: str, body: bytes, now: dt.datetime | None = None) -> Attempt:
        deadline = time.monotonic() + self.timeout
        try:
            resolver = self.resolver or system_resolver(self.timeout)
            target = check_url(url, resolver, allow_private=self.allow_private)
        except RefusedUrl as e:
            return Attempt(False, None, f"refused: {e}")
        headers = signed_headers(secret, message_id, body, now or dt.datetime.now(dt.UTC))
        try:
            status = self._exchange(target, headers, body, deadline)
        except TimeoutError:
            return Attempt(False, None, f"timed out after {self.timeout:g} s")
        except ssl.SSLError as e:
            return Attempt(False, None, f"TLS: {e}")
        except OSError as e:
            return Attempt(False, None, f"connection failed: {e}")
        except ValueError as e:
            return Attempt(False, None, f"bad answer: {e}")
        if 200 <= status < 300:
            return Attempt(True, status)
        if 300 <= status < 400:
            return Attempt(False, status, f"HTTP {status}: redirects are not followed")
        return Attempt(False, status, f"HTTP {status}")

    def _exchange(self, target: Target, headers: dict[str, str], body: bytes, deadline: float) -> int:
        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            return remaining

        default_port = 443 if target.scheme == "https" else 80
        host_header = f"[{target.host}]" if ":" in target.host else target.host
        if target.port != default_port:
            host_header += f":{target.port}"
        lines = [f"POST {target.path} HTTP/1.1", f"Host: {host_header}", f"User-Agent: {USER_AGENT}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers.items())]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
        sock = socket.create_connection((target.address, target.port), timeout=left())
        try:
            if target.scheme == "https":
                sock.settimeout(left())
                sock = (self.tls or default_tls()).wrap_socket(sock, server_hostname=target.host)
            sock.settimeout(left())
            sock.sendall(request)
            received = b""
            while b"\r\n" not in received:
                sock.settimeout(left())
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
                if len(received) > MAX_STATUS_LINE:
                    break
        finally:
            sock.close()
        return parse_status_line(received.split(b"\r\n", 1)[0])


def parse_status_line(line: bytes) -> int:
    """``HTTP/1.1 204 No Content`` -> 204; ValueError for anything else."""
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {line[:80]!r}")
    return int(parts[1])
