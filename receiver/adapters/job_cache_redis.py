"""The deployment-wide GetLiveSnapshotJob cache on Redis (when RECEIVER_BROKER_URL is a redis:// URL).

One key per job holds the answer and its expiry (``SET .. PX``, so Redis drops it by itself); one key per job
is the lock of the process asking ICE (``SET .. NX PX``, released only by its holder). See ice_cache.py.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

PREFIX = "receiver:job-cache:"
# Delete the lock only while it is still ours: an expired lock may belong to another process by now.
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisJobCache:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        import redis  # an optional dependency (the celery extra)

        # redis-py's pool notices a fork and opens new connections in the child: nothing shared across it.
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._token = f"{os.getpid()}-{uuid.uuid4().hex}"
        self._unlock = self._redis.register_script(_UNLOCK)

    def get(self, job_id: str) -> tuple[float, dict[str, Any] | None] | None:
        value = self._redis.get(PREFIX + job_id)
        if value is None:
            return None
        entry = json.loads(value)
        return float(entry["expires_at"]), entry["job"]

    def put(self, job_id: str, raw: dict[str, Any] | None, expires_at: float) -> None:
        import time

        ms = int((expires_at - time.time()) * 1000)
        if ms > 0:
            self._redis.set(PREFIX + job_id, json.dumps({"expires_at": expires_at, "job": raw}), px=ms)

    def try_lock(self, job_id: str, seconds: float) -> bool:
        return bool(self._redis.set(f"{PREFIX}{job_id}:lock", self._token, nx=True, px=int(seconds * 1000)))

    def unlock(self, job_id: str) -> None:
        self._unlock(keys=[f"{PREFIX}{job_id}:lock"], args=[self._token])

    def invalidate(self, job_id: str) -> None:
        self._redis.delete(PREFIX + job_id)

    def close(self) -> None:
        self._redis.close()
