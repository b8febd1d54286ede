"""A real webhook subscriber on loopback: an HTTP server that verifies every request with the standardwebhooks
package (as a subscriber's own code would) and answers what the test says, per path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    payload: Any
    answered: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Subscriber:
    """``secrets[path]`` verifies requests to that path; ``answers[path]`` is a list of status codes to give
    in turn (the last repeats; default 204); ``delay[path]`` seconds to wait before answering."""

    secrets: dict[str, str] = field(default_factory=dict)
    answers: dict[str, list[int]] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Subscriber:
        sub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                path = self.path
                secret = sub.secrets.get(path)
                verified, payload = False, None
                if secret is not None:
                    try:
                        payload = Webhook(secret).verify(body, headers)
                        verified = True
                    except WebhookVerificationError:
                        pass
                time.sleep(sub.delay.get(path, 0))
                with sub.lock:
                    queue = sub.answers.get(path) or [204]
                    status = queue.pop(0) if len(queue) > 1 else queue[0]
                    sub.received.append(Received(path, headers, body, verified, payload, status))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait(self, cond: Callable[[], bool], timeout: float = 20.0, pump: Callable[[], object] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pump is not None:
                pump()
            if cond():
                return True
            time.sleep(0.02)
        return cond()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
