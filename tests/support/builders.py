"""Shared builders for tests and benches: the fakes' credentials and names, an app, a snapshot, a callback body."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result
from flask import Flask

from receiver.app import create_app
from receiver.cli import CliState, main
from receiver.config import Settings
from receiver.db.migrate import ensure_schema
from receiver.services import services
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss

AK, SK = "testAccessKeyId", "testAccessKeySecret"
OSS_ENDPOINT = "oss-cn-shanghai.aliyuncs.com"
BUCKET = "testbucket"
JOB = "job-0001"


def build_app(settings: Settings) -> Flask:
    app = create_app(settings)
    app.config["TESTING"] = True
    ensure_schema(services(app).engine)
    return app


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


class Cli:
    """Runs `receiver ...` commands on a Settings object (through ctx.obj), never on the environment."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.with_(log_level="ERROR")

    def invoke(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), obj=CliState(self.settings))
