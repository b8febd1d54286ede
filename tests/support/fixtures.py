"""The fixtures every integration and end-to-end test shares: fake ICE and OSS on loopback (verifying the real
SDKs' signatures), settings pointing at them, an app with a fresh SQLite database per test, its Services and client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from receiver.config import Settings
from receiver.services import Services, services
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame
from tests.support.builders import AK, BUCKET, JOB, OSS_ENDPOINT, SK, build_app


@pytest.fixture
def fake_ice() -> Iterator[FakeIce]:
    with FakeIce(access_keys={AK: SK}) as ice:
        ice.add_job(JOB, bucket=BUCKET, endpoint=OSS_ENDPOINT)
        yield ice


@pytest.fixture
def fake_oss() -> Iterator[FakeOss]:
    with FakeOss(access_keys={AK: SK}) as oss:
        oss.create_bucket(BUCKET)
        yield oss


@pytest.fixture
def settings(tmp_path: Path, fake_ice: FakeIce, fake_oss: FakeOss) -> Settings:
    return Settings(
        data_dir=tmp_path,
        ice_endpoint=fake_ice.url,
        access_key_id=AK,
        access_key_secret=SK,
        oss_endpoint_map={OSS_ENDPOINT: fake_oss.url},
        workers=2,
        retry_base_seconds=0.01,
        retry_max_seconds=0.2,
        sweep_seconds=0.05,
        lease_seconds=5,
        max_attempts=5,
        ice_timeout_ms=2000,
        oss_timeout_seconds=2,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = build_app(settings)
    yield app
    services(app).close()


@pytest.fixture
def svc(app: Flask) -> Services:
    return services(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def frame() -> bytes:
    return make_frame(seed=1, kind="photo")
