"""What the read API's views share: cache headers, conditional requests, the signing key, a job or 404."""

from __future__ import annotations

from flask import request
from sqlalchemy.orm import Session

from receiver.db.models import Job
from receiver.services import current_services
from receiver.web.errors import ApiError

IMMUTABLE = "public, max-age=31536000, immutable"
# A range whose end is this far in the past has settled: late callbacks and the reconciler (default period
# 60 s) fill a range within minutes, so older ranges are cached for as long.
SETTLED_MS = 5 * 60 * 1000


def signing_key() -> str | None:
    """The key that signs thumbnail URLs, when API keys gate /v1 (otherwise URLs are plain)."""
    settings = current_services().settings
    return settings.url_signing_secret if settings.api_keys else None


def job_or_404(s: Session, job_id: str) -> Job:
    job = s.get(Job, job_id) if len(job_id) <= 128 and job_id.isprintable() else None
    if job is None:
        raise ApiError(404, "NotFound", f"no job {job_id[:128]!r}")
    return job


def not_modified(etag: str) -> bool:
    """If-None-Match names ``etag`` (weak comparison, RFC 9110 13.1.2: W/"x" and "x" are the same), or is *."""
    tags = {t.strip() for t in request.headers.get("If-None-Match", "").split(",") if t.strip()}
    return "*" in tags or etag.removeprefix("W/") in {t.removeprefix("W/") for t in tags}
