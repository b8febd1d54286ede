"""The deployment-wide GetLiveSnapshotJob cache on Redis (when RECEIVER_BROKER_URL is a redis:// URL).

One key per job holds the answer (``SET .. PX``: Redis keeps the time left, on its own clock, and drops the key
by itself); another is the lock of the process asking ICE (``SET .. NX PX``, released only by its holder). The
two live under different prefixes, so no job id can name the other's key. See ice_cache.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

ENTRY = "receiver:job-cache:e:"
LOCK = "receiver:job-cache:l:"
# Delete the lock only while it is still ours: an expired lock may belong to another process by now.
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisJobCache:
    def __init__(self, url: str, timeout: float = 2.0) -> None:
        import redis  # an optional dependency (the celery extra)

        # redis-py's pool notices a fork and opens new connections in the child: nothing shared across it.
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._unlock = self._redis.register_script(_UNLOCK)
        # One token per lock taken, not per process: a child forked from this process (Celery's prefork pool)
        # must not be able to release a lock its parent or a sibling took.
        self._held: dict[str, str] = {}

    def get(self, key: str) -> tuple[float, dict[str, Any] | None] | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(ENTRY + key)
        pipe.pttl(ENTRY + key)
        value, left_ms = pipe.execute()
        if value is None or left_ms <= 0:  # gone, or (-1) a key without expiry that this code never writes
            return None
        raw = json.loads(value)  # ValueError when it is not JSON: the caller drops the entry
        if raw is not None and not isinstance(raw, dict):
            raise ValueError(f"job-cache entry is {type(raw).__name__}, not an object")
        return left_ms / 1000, raw

    def put(self, key: str, raw: dict[str, Any] | None, ttl: float) -> None:
        ms = int(ttl * 1000)
        if ms > 0:
            self._redis.set(ENTRY + key, json.dumps(raw), px=ms)

    def try_lock(self, key: str, seconds: float) -> bool:
        token = uuid.uuid4().hex
        if self._redis.set(LOCK + key, token, nx=True, px=int(seconds * 1000)):
            self._held[key] = token
            return True
        return False

    def unlock(self, key: str) -> None:
        token = self._held.pop(key, None)
        if token is not None:
            self._unlock(keys=[LOCK + key], args=[token])

    def invalidate(self, key: str) -> None:
        self._redis.delete(ENTRY + key)

    def close(self) -> None:
        self._redis.close()
