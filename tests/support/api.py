"""Helpers for the read-API tests: index rows directly (fast), and check answers against /openapi.json."""

from __future__ import annotations

import hashlib
from typing import Any

import jsonschema
from flask.testing import FlaskClient

from receiver.db.models import Event, Snapshot, Thumbnail
from receiver.services import Services
from receiver.worker.index import upsert_job
from tests.support.builders import BUCKET, JOB, OSS_ENDPOINT

_SPECS: dict[int, dict[str, Any]] = {}
_seq = 0


def _seq_free(svc: Services, job_id: str, ms: int) -> bool:
    from sqlalchemy import select

    with svc.sessions() as s:
        q = select(Snapshot.id).where(Snapshot.job_id == job_id, Snapshot.captured_at_ms == ms)
        return s.execute(q).first() is None


def add_job(svc: Services, job_id: str = JOB, **fields: Any) -> None:
    from receiver.adapters.base import JobInfo

    info = JobInfo(job_id=job_id, name=fields.get("name", f"name of {job_id}"), status="Running",
                   stream_url="rtmp://example/live/x", interval_seconds=5, endpoint=OSS_ENDPOINT, bucket=BUCKET,
                   overwrite_format=None, sequence_format="snapshot/{JobId}/{UnixTimestamp}.jpg",
                   callback_url=None, create_time=None, raw={})
    with svc.sessions.begin() as s:
        upsert_job(s, info, track=True)


def add_snapshot(svc: Services, ms: int, job_id: str = JOB, data: bytes | None = None,
                 widths: tuple[int, ...] = (320, 160)) -> int:
    """A snapshot row with thumbnail rows; ``data`` (bytes of each thumbnail) is stored when given."""
    global _seq
    _seq += 1
    key = f"snapshot/{job_id}/{ms}.jpg" if _seq_free(svc, job_id, ms) else f"snapshot/{job_id}/{ms}-{_seq}.jpg"
    thumbs = []
    for w in widths:
        storage_key = f"t/{key}/{w}.jpg"
        body = data if data is not None else b""
        if data is not None:
            svc.thumbs.put(storage_key, body, "image/jpeg")
        thumbs.append(Thumbnail(width=w, height=w * 9 // 16, format="jpeg", storage_key=storage_key,
                                size=len(body), etag=hashlib.sha256(body + storage_key.encode()).hexdigest()[:32]))
    snap = Snapshot(job_id=job_id, captured_at_ms=ms, kind="sequence", oss_endpoint=OSS_ENDPOINT, oss_bucket=BUCKET,
                    oss_object=key, etag=f"E{ms}", size=1000, width=1920, height=1080,
                    sha256=hashlib.sha256(key.encode()).hexdigest(), create_timestamp_ms=ms, last_modified_ms=None,
                    thumbnails=thumbs)
    with svc.sessions.begin() as s:
        s.add(snap)
        s.flush()
        return snap.id


def add_event(svc: Services, identity: str, status: str = "pending", job_id: str = JOB) -> int:
    with svc.sessions.begin() as s:
        ev = Event(job_id=job_id, identity=identity, origin="callback", status=status, attempts=0,
                   last_error="boom" if status == "failed" else None, oss_object=f"snapshot/{job_id}/{identity}.jpg")
        s.add(ev)
        s.flush()
        return ev.id


def spec(client: FlaskClient) -> dict[str, Any]:
    key = id(client.application)
    if key not in _SPECS:
        resp = client.get("/openapi.json")
        assert resp.status_code == 200
        _SPECS[key] = resp.get_json()
    return _SPECS[key]


def conforms(client: FlaskClient, body: Any, schema_name: str) -> Any:
    """Validate ``body`` against components/schemas/<name> of the app's own OpenAPI document."""
    doc = spec(client)
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    validator = jsonschema.Draft202012Validator
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(body)
    return body


def get_ok(client: FlaskClient, url: str, schema_name: str, **kw: Any) -> Any:
    resp = client.get(url, **kw)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return conforms(client, resp.get_json(), schema_name)


def get_error(client: FlaskClient, url: str, status: int, code: str | None = None, **kw: Any) -> dict[str, Any]:
    resp = client.get(url, **kw)
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = conforms(client, resp.get_json(), "Error")
    if code is not None:
        assert body["error"]["code"] == code, body
    return body
