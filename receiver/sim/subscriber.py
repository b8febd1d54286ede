"""The demo's webhook subscriber: an HTTP server on loopback that verifies each delivery with the
standardwebhooks package, as a real subscriber would, and logs one line per message."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

log = logging.getLogger("receiver.demo.subscriber")

MAX_BODY = 1 << 20


class DemoSubscriber:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.secret: str | None = None  # set once the subscription exists
        self.verified = 0
        sub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, MAX_BODY))
                status = sub.receive(body, {k: v for k, v in self.headers.items()})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}/webhooks"

    def receive(self, body: bytes, headers: dict[str, str]) -> int:
        if self.secret is None:
            return 503
        try:
            message = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as e:
            log.warning("webhook refused: %s", e)
            return 401
        self.verified += 1
        data = message.get("data") or {}
        what = data.get("id") if message.get("type") == "snapshot.created" else json.dumps(data)[:120]
        log.info("webhook %s verified: %s %s (job %s)", headers.get("webhook-id") or headers.get("Webhook-Id"),
                 message.get("type"), what, data.get("job_id"))
        return 204

    def start(self) -> DemoSubscriber:
        threading.Thread(target=self.server.serve_forever, name="demo-subscriber", daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
