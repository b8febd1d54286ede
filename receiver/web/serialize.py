"""The JSON shapes of product.md 3.2, in one place."""

from __future__ import annotations

from typing import Any

from flask import has_app_context

from receiver.db.models import Event, Job, Snapshot
from receiver.db.queries import JobCounters
from receiver.services import current_services
from receiver.timeutil import dt_to_iso, ms_to_iso
from receiver.web.health_query import job_status
from receiver.web.urlsign import thumbnail_url


def _url_width(actual: int, widths: tuple[int, ...] | None = None) -> int:
    """The configured width that serves a rendition: itself, or for a source narrower than a configured
    width (not upscaled), the smallest configured width above it (the endpoint serves the largest rendition
    not wider than the width asked). ``widths`` for callers outside a request (the outbox writer)."""
    if widths is None:
        if not has_app_context():
            return actual
        widths = current_services().settings.thumbnail_widths
    if actual in widths:
        return actual
    wider = [w for w in widths if w > actual]
    return min(wider) if wider else actual


def snapshot_json(snap: Snapshot, signing_key: str | None = None,
                  widths: tuple[int, ...] | None = None) -> dict[str, Any]:
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
                "url": thumbnail_url(snap.id, _url_width(t.width, widths), signing_key),
            }
            for t in snap.thumbnails
        ],
        "placeholder": snap.placeholder,
    }


def job_json(job: Job, latest: Snapshot | None, signing_key: str | None = None) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "name": job.name,
        "status": job.status,
        "stream_url": job.stream_url,
        "interval_seconds": job.interval_seconds,
        "tracked": job.tracked,
        "account": job.account,
        "latest": snapshot_json(latest, signing_key) if latest is not None else None,
        "health": job_status(job),  # batched per page: see health_query.py
    }


def _ms_iso(ms: int | None) -> str | None:
    return ms_to_iso(ms) if ms is not None else None


def job_detail_json(job: Job, latest: Snapshot | None, counters: JobCounters,
                    signing_key: str | None = None) -> dict[str, Any]:
    """A job item plus what ICE said about its output, and counters for operators."""
    out = job_json(job, latest, signing_key)
    out.update({
        "oss_endpoint": job.oss_endpoint,
        "oss_bucket": job.oss_bucket,
        "overwrite_format": job.overwrite_format,
        "sequence_format": job.sequence_format,
        "fetched_at": dt_to_iso(job.fetched_at) if job.fetched_at is not None else None,
        "reconciled_until": _ms_iso(job.reconciled_until_ms),
        "counters": {
            "snapshots": counters.snapshots,
            "first_captured_at": _ms_iso(counters.first_captured_at_ms),
            "last_captured_at": _ms_iso(counters.last_captured_at_ms),
            "events": counters.events,
        },
    })
    return out


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
