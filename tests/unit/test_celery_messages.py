"""Which broker URLs the direct publisher takes (worker/celery_messages.py); no Redis needed: redis-py
connects lazily, so building a client only parses the URL."""

from __future__ import annotations

import logging

import pytest

from receiver.worker.celery_messages import RedisTaskPublisher, redis_url, supports


def test_only_redis_urls_are_published_directly():
    assert supports("redis://localhost:6379/0") and supports("rediss://:pw@host:6380/1")
    assert not supports("unix:///run/redis.sock")  # not a kombu transport: workers could not consume it
    assert not supports("amqp://guest@localhost//") and not supports("sentinel://host:26379")


def test_kombus_certificate_options_are_translated_for_redis_py():
    url = "rediss://:pw@host:6380/1?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=%2Fetc%2Fca.pem"
    assert redis_url(url) == "rediss://:pw@host:6380/1?ssl_cert_reqs=required&ssl_ca_certs=%2Fetc%2Fca.pem"
    RedisTaskPublisher(url, "t", "q").close()  # builds a connection object (checks the TLS options), sends nothing


@pytest.mark.parametrize("url", ["rediss://localhost/0?ssl_cert_reqs=sometimes", "redis://localhost/0?no_such_option=1"])
def test_a_url_redis_py_cannot_take_raises_without_connecting(url: str):
    with pytest.raises((ValueError, TypeError)):
        RedisTaskPublisher(url, "t", "q")


def test_the_dispatcher_falls_back_to_send_task_for_such_a_url(settings, caplog):  # type: ignore[no-untyped-def]
    from receiver.services import services
    from tests.support.builders import build_app

    app = build_app(settings.with_(queue="celery", broker_url="redis://localhost/0?no_such_option=1"))
    svc = services(app)
    try:
        with caplog.at_level(logging.WARNING):
            assert svc.dispatcher._fast_publisher() is None  # type: ignore[union-attr]
            assert svc.dispatcher._fast_publisher() is None  # type: ignore[union-attr]  # decided once
        warnings = [r.message for r in caplog.records if "send_task" in r.message]
        assert len(warnings) == 1 and "no_such_option" in warnings[0]
    finally:
        svc.close()
