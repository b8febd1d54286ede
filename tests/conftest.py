"""Shared fixtures: real SDK clients against local fake ICE and OSS servers, a fresh database per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from receiver.app import create_app
from receiver.config import Settings
from receiver.db.migrate import ensure_schema
from receiver.services import Services
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame

AK, SK = "testAccessKeyId", "testAccessKeySecret"
OSS_ENDPOINT = "oss-cn-shanghai.aliyuncs.com"
BUCKET = "testbucket"
JOB = "job-0001"


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


def build_app(settings: Settings) -> Flask:
    app = create_app(settings)
    app.config["TESTING"] = True
    ensure_schema(app.extensions["receiver"].engine)
    return app


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = build_app(settings)
    yield app
    app.extensions["receiver"].close()


@pytest.fixture
def svc(app: Flask) -> Services:
    s: Services = app.extensions["receiver"]
    return s


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def frame() -> bytes:
    return make_frame(seed=1, kind="photo")


def put_snapshot(oss: FakeOss, ice: FakeIce, ms: int, data: bytes, job: str = JOB) -> str:
    key = f"snapshot/{job}/{ms}.jpg"
    oss.put(BUCKET, key, data)
    ice.add_file(job, key, ms)
    return key


def callback_body(key: str | None = None, ms: int | None = None, job: str = JOB, **extra: Any) -> bytes:
    body: dict[str, Any] = {"JobId": job}
    if key is not None:
        body["OssObject"] = key
        body["OssBucket"] = BUCKET
        body["OssEndpoint"] = OSS_ENDPOINT
    if ms is not None:
        body["CreateTimestamp"] = ms
    body.update(extra)
    return json.dumps({"EventType": "LiveSnapshotComplete", "EventTime": "2026-11-28T12:00:00Z",
                       "MessageBody": body}).encode()
