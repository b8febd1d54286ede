"""Keeping the jobs table in step with what ICE last said about each job."""

from __future__ import annotations

from sqlalchemy.orm import Session

from .db import insert_for
from .ice import JobInfo
from .models import Job, utcnow


def upsert_job(session: Session, info: JobInfo, *, track: bool = False) -> Job:
    job = session.get(Job, info.job_id)
    if job is None:
        # Two workers meeting a new job at once both get here on PostgreSQL (SQLite serialises writers):
        # ON CONFLICT DO NOTHING waits for the winner's commit, then we read its row instead of failing.
        insert = insert_for(session.get_bind().dialect.name)
        session.execute(insert(Job).values(job_id=info.job_id, tracked=False)
                        .on_conflict_do_nothing(index_elements=["job_id"]))
        job = session.get(Job, info.job_id)
        assert job is not None
    job.name = info.name
    job.status = info.status
    job.stream_url = info.stream_url
    job.interval_seconds = info.interval_seconds
    job.oss_endpoint = info.endpoint
    job.oss_bucket = info.bucket
    job.overwrite_format = info.overwrite_format
    job.sequence_format = info.sequence_format
    job.callback_url = info.callback_url
    job.raw = info.to_json()
    job.fetched_at = utcnow()
    if track and not job.untracked:
        job.tracked = True
    return job
