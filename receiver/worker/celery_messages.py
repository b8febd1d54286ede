"""Publishing ``receiver.process_events`` messages to a Redis broker without Celery's per-message machinery.

Celery's ``send_task`` through kombu's Redis transport cost about 1 ms of CPU per message in a gunicorn web
process (a new redis-py client object, the task-message builder, a round trip each): as much as recording the
callback itself (bench/scale.py, callbacks). This module writes the same bytes kombu would, in Celery's
documented message protocol 2 (https://docs.celeryq.dev/en/stable/internals/protocol.html) and kombu's Redis
envelope, and sends a whole burst as one LPUSH on one kept connection. The consuming side is the ordinary
Celery worker; ``test_celery.py`` checks these messages against ``send_task``'s, key by key, so a Celery or
kombu upgrade that changes the format fails a test instead of the queue.

Used only for ``redis://`` and ``rediss://`` broker URLs that redis-py can open; any other broker, or a URL
whose options redis-py does not take, keeps ``send_task`` (CeleryDispatcher).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDIS_SCHEMES = ("redis", "rediss")
# kombu (and Celery's docs) spell rediss:// certificate checks as the ssl module's constants, redis-py in words.
_CERT_REQS = {"CERT_REQUIRED": "required", "CERT_OPTIONAL": "optional", "CERT_NONE": "none"}
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def supports(broker_url: str) -> bool:
    return urlsplit(broker_url).scheme in REDIS_SCHEMES


def redis_url(broker_url: str) -> str:
    """The broker URL as redis-py's ``from_url`` reads it (kombu's ``ssl_cert_reqs`` values translated)."""
    parts = urlsplit(broker_url)
    query = [(k, _CERT_REQS.get(v, v) if k == "ssl_cert_reqs" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def task_message(task: str, queue: str, args: Sequence[Any], extra_headers: dict[str, Any],
                 origin: str, reply_to: str) -> bytes:
    """One message as kombu's Redis transport stores it (the JSON a worker BRPOPs)."""
    task_id = str(uuid.uuid4())
    body = json.dumps([list(args), {}, _EMBED]).encode()
    headers = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None, "group": None,
        "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": repr(list(args)), "kwargsrepr": "{}", "origin": origin, "ignore_result": None,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}, **extra_headers,
    }
    message = {
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8", "content-type": "application/json",
        "headers": headers,
        "properties": {"correlation_id": task_id, "reply_to": reply_to, "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    }
    return json.dumps(message).encode()


class RedisTaskPublisher:
    """Sends one task's messages, one argument each, to a queue on a Redis broker; one thread uses it.

    Raises ValueError or TypeError (no connection is made yet) when redis-py cannot take the URL's options."""

    def __init__(self, broker_url: str, task: str, queue: str, timeout: float = 2.0) -> None:
        import redis  # the celery[redis] extra

        self.task, self.queue = task, queue
        try:
            self._client = redis.Redis.from_url(redis_url(broker_url), socket_timeout=timeout,
                                                socket_connect_timeout=timeout)
            # redis-py checks the URL's options when it builds a connection object (it connects later, on
            # first use): build the one this thread will use now, so a bad option is known before publishing.
            pool = self._client.connection_pool
            pool.release(pool.make_connection())  # type: ignore[arg-type]  # the pool's own connection class
        except redis.RedisError as e:  # e.g. an unknown ssl_cert_reqs value
            raise ValueError(str(e)) from e
        # Celery's own values for a client that is not a worker: its anonymous node name, and a reply
        # address nobody reads (results are ignored).
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self._reply_to = str(uuid.uuid4())

    def publish(self, args: Sequence[Any], headers: dict[str, Any]) -> int:
        """One message per element of ``args``, in order (the first is consumed first), in one LPUSH.

        Returns the queue's length after the push (LPUSH's reply): the messages still waiting for a worker."""
        if not args:
            return 0
        messages = [task_message(self.task, self.queue, [a], headers, self._origin, self._reply_to) for a in args]
        # LPUSH k m1 m2 .. inserts each at the head in turn; workers BRPOP from the tail, so m1 leaves first.
        return int(self._client.lpush(self.queue, *messages))

    def close(self) -> None:
        self._client.close()
