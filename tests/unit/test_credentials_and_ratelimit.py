"""AccountCredential's refresh rules and the per-account token bucket, on a controlled clock."""

from __future__ import annotations

import pytest
from alibabacloud_credentials.provider.refreshable import Credentials

from receiver.adapters.credentials import AccountCredential, CredentialUnavailable
from receiver.adapters.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


class Provider:
    """Hands out a new credential valid ``ttl`` seconds per call, or fails while ``failing``."""

    def __init__(self, clock: Clock, ttl: float) -> None:
        self.clock, self.ttl, self.calls, self.failing = clock, ttl, 0, False

    def get_credentials(self) -> Credentials:
        self.calls += 1
        if self.failing:
            raise RuntimeError(f"sts down (key id-{self.calls - 1})")
        return Credentials(access_key_id=f"id-{self.calls}", access_key_secret=f"secret-{self.calls}",
                           security_token=f"token-{self.calls}", expiration=int(self.clock() + self.ttl),
                           provider_name="test")


def test_temporary_credential_is_reused_then_refreshed_ahead_of_expiry() -> None:
    clock = Clock()
    p = Provider(clock, 3600)
    c = AccountCredential("a", "credentials_uri", p, clock)
    first = c.current()
    assert c.current() is first and p.calls == 1  # not asked again while fresh
    clock.now += 3600 - 15 * 60 - 1
    assert c.current() is first
    clock.now += 2  # inside the last 15 minutes: renewed
    second = c.current()
    assert second is not first and p.calls == 2 and c.refreshes == 2 and c.status == "ok"
    assert c.expires_at == int(clock.now + 3600)


def test_failed_refresh_keeps_a_valid_credential_then_waits_never_expired() -> None:
    clock = Clock()
    p = Provider(clock, 10)
    c = AccountCredential("a", "credentials_uri", p, clock)
    first = c.current()
    clock.now += 8  # within 30 % of the lifetime: time to renew
    p.failing = True
    assert c.current() is first  # still valid for ~2 s: used, the error remembered
    assert c.status == "refreshing" and "sts down" in (c.last_error or "")
    clock.now += 1.5  # less than MIN_VALIDITY_S left: never handed out
    with pytest.raises(CredentialUnavailable):
        c.current()
    assert c.status == "error" and "id-1" not in (c.last_error or "")  # the key id is redacted
    assert c.get_type() == "credentials_uri"
    p.failing = False
    calls = p.calls
    with pytest.raises(CredentialUnavailable):
        c.current()  # a failed refresh is not retried at once for every waiting request
    assert p.calls == calls
    clock.now += 1.0
    assert c.current().get_access_key_id() != first.get_access_key_id() and c.status == "ok"
    assert c.last_error is None


def test_short_lived_credentials_refresh_a_few_times_per_lifetime_not_per_request() -> None:
    clock = Clock()
    p = Provider(clock, 3)
    c = AccountCredential("a", "credentials_uri", p, clock)
    for _ in range(300):  # 30 s of requests every 0.1 s
        cred = c.current()
        assert cred.get_expiration() - clock.now >= 1.0
        clock.now += 0.1
    assert 10 <= p.calls <= 20


def test_no_provider_is_an_error_status_and_unavailable() -> None:
    c = AccountCredential("a", "default", None)
    assert c.describe()["credential_status"] == "error"
    with pytest.raises(CredentialUnavailable):
        c.current()


def test_token_bucket_limits_halves_on_throttling_and_recovers() -> None:
    clock = Clock()
    b = TokenBucket(10, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(30):
        b.acquire()
    assert 1.9 <= clock.now - start <= 2.1  # 10 burst + 20 at 10/s
    b.throttled_answer()
    assert b.rate == 5 and b.throttled == 1
    clock.now += 20
    b.acquire()
    assert b.rate == 10  # recovered after a quiet while
    assert TokenBucket(0).acquire() == 0.0  # 0 = no limit
