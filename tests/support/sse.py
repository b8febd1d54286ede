"""A streaming Server-Sent Events client on a plain socket, for the live stream's tests (integration and e2e).

A socket, not http.client: a read that times out must leave the stream usable (http.client's file object
refuses every read after one timeout)."""

from __future__ import annotations

import json
import socket
import time
from email.message import Message
from email.parser import Parser
from typing import Any


class SseClient:
    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None, host: str = "127.0.0.1",
                 timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._raw = b""
        self._body = b""
        self._ended = False
        while b"\r\n\r\n" not in self._raw:
            if not self._recv(timeout):
                raise TimeoutError("no response headers")
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status_line, _, header_text = head.decode("latin-1").partition("\r\n")
        self.status = int(status_line.split()[1])
        self.headers: Message = Parser().parsestr(header_text)
        self._chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._length = int(self.headers.get("Content-Length", "-1"))
        self.comments: list[str] = []
        self._decode()

    def _recv(self, timeout: float) -> bool:
        self.sock.settimeout(max(0.001, timeout))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            self._ended = True
            return False
        self._raw += data
        return True

    def _decode(self) -> None:
        if not self._chunked:
            self._body += self._raw
            self._raw = b""
            return
        while b"\r\n" in self._raw:
            size_line, rest = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self._ended = True
                self._raw = b""
                return
            if len(rest) < size + 2:
                return
            self._body += rest[:size]
            self._raw = rest[size + 2:]

    def json(self, timeout: float = 5) -> Any:
        deadline = time.monotonic() + timeout
        while len(self._body) < self._length and not self._ended and time.monotonic() < deadline:
            self._recv(deadline - time.monotonic())
            self._decode()
        return json.loads(self._body)

    def _line(self, deadline: float) -> str | None:
        while b"\n" not in self._body:
            left = deadline - time.monotonic()
            if self._ended:
                raise EOFError("the stream ended")
            if left <= 0 or not self._recv(left):
                if self._ended:
                    raise EOFError("the stream ended")
                if time.monotonic() >= deadline:
                    return None
                continue
            self._decode()
        line, self._body = self._body.split(b"\n", 1)
        return line.decode()

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event (``id``, ``event``, ``data`` parsed as JSON), or None when none came in time."""
        deadline = time.monotonic() + timeout
        fields: dict[str, Any] = {}
        while True:
            line = self._line(deadline)
            if line is None:
                return None  # a partly read event stays in fields only until here: tests wait for whole ones
            if line == "":
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                    return fields
                fields = {}
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            fields[name] = value

    def events(self, n: int, timeout: float) -> list[dict[str, Any]]:
        """Up to ``n`` events, waiting at most ``timeout`` in all."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            ev = self.next_event(max(0.0, deadline - time.monotonic()))
            if ev is None:
                break
            out.append(ev)
        return out

    def close(self) -> None:
        self.sock.close()
