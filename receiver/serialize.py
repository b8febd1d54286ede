"""The JSON shapes of product.md 3.2, in one place."""

from __future__ import annotations

from typing import Any

from .models import Event, Job, Snapshot
from .timeutil import dt_to_iso, ms_to_iso
from .urlsign import thumbnail_url


def snapshot_json(snap: Snapshot, signing_key: str | None = None) -> dict[str, Any]:
    return {
        "id": str(snap.id),
        "job_id": snap.job_id,
        "captured_at": ms_to_iso(snap.captured_at_ms),
        "captured_at_ms": snap.captured_at_ms,
        "kind": snap.kind,
        "source": {
            "endpoint": snap.oss_endpoint,
            "bucket": snap.oss_bucket,
            "object": snap.oss_object,
            "etag": snap.etag,
            "size": snap.size,
        },
        "width": snap.width,
        "height": snap.height,
        "sha256": snap.sha256,
        "thumbnails": [
            {
                "width": t.width,
                "height": t.height,
                "format": t.format,
                "url": thumbnail_url(snap.id, t.width, signing_key),
            }
            for t in snap.thumbnails
        ],
    }


def job_json(job: Job, latest: Snapshot | None, signing_key: str | None = None) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "name": job.name,
        "status": job.status,
        "stream_url": job.stream_url,
        "interval_seconds": job.interval_seconds,
        "tracked": job.tracked,
        "latest": snapshot_json(latest, signing_key) if latest is not None else None,
        "health": None,
    }


def event_json(ev: Event) -> dict[str, Any]:
    return {
        "id": str(ev.id),
        "job_id": ev.job_id,
        "status": ev.status,
        "origin": ev.origin,
        "received_at": dt_to_iso(ev.received_at),
        "attempts": ev.attempts,
        "last_error": ev.last_error,
        "snapshot_ids": [str(i) for i in ev.snapshot_ids],
        "object": ev.oss_object,
    }
