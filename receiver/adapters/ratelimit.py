"""A token bucket per account for its ICE calls (product.md section 7: `ice_qps`), shared by verify,
reconcile and discovery in one process, and slowed down by throttling answers.

ICE counts its quota per account across all keys and RAM users, so one account's throttling says nothing about
another's: each account has its own bucket. On ``Throttling.User`` the rate halves (down to a floor); each
second without throttling it recovers by a tenth of the configured rate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIN_FRACTION = 1 / 16
RECOVERY_PER_SECOND = 0.1
MAX_WAIT_S = 30.0


class TokenBucket:
    """``rate`` calls per second with a burst of ``rate`` (at least 1); ``rate <= 0`` means no limit."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.configured = float(rate)
        self.rate = float(rate)
        self._clock, self._sleep = clock, sleep
        self._tokens = max(1.0, self.rate)
        self._last = clock()
        self._last_throttle = -1e18
        self._lock = threading.Lock()
        self.waited_s = 0.0
        self.throttled = 0

    @property
    def unlimited(self) -> bool:
        return self.configured <= 0

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        if self.rate < self.configured and now - self._last_throttle > 1.0:
            self.rate = min(self.configured, self.rate + self.configured * RECOVERY_PER_SECOND * elapsed)
        self._tokens = min(max(1.0, self.rate), self._tokens + elapsed * self.rate)

    def acquire(self) -> float:
        """Take one token, waiting for it (at most MAX_WAIT_S); returns the seconds waited."""
        if self.unlimited:
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._refill(now)
                if self._tokens >= 1.0 - 1e-9:  # float residue must not leave a token unusable
                    self._tokens = max(0.0, self._tokens - 1.0)
                    self.waited_s += waited
                    return waited
                delay = max(0.001, (1.0 - self._tokens) / self.rate)
            if waited + delay > MAX_WAIT_S:
                delay = max(0.0, MAX_WAIT_S - waited)
                if delay == 0.0:
                    with self._lock:
                        self.waited_s += waited
                    return waited  # give up waiting: ICE's own answer (throttled or not) decides
            self._sleep(delay)
            waited += delay

    def throttled_answer(self) -> None:
        """ICE said Throttling: halve the rate (an unlimited bucket starts limiting at what it managed)."""
        with self._lock:
            self.throttled += 1
            now = self._clock()
            self._refill(now)
            self._last_throttle = now
            if self.unlimited:
                return
            self.rate = max(self.configured * MIN_FRACTION, self.rate / 2)
            self._tokens = min(self._tokens, 0.0)
