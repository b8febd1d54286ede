"""Which jobs the reconciler sweeps: `receiver track/untrack`, and optional discovery from ICE."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from sqlalchemy import select, update

from receiver.accounts import DEFAULT
from receiver.adapters.base import JobInfo
from receiver.db.models import Job
from receiver.exceptions import JobNotFound, Rejected
from receiver.services import Services
from receiver.worker.index import upsert_job

log = logging.getLogger(__name__)


def track(svc: Services, job_id: str, account: str = DEFAULT) -> JobInfo:
    """Verify the job with ICE as ``account`` (JobNotFound propagates) and mark it tracked; the job then belongs
    to that account (Rejected when it already belongs to another)."""
    if account not in svc.account_list():
        raise Rejected(f"no account {account!r} (accounts: {', '.join(svc.account_list().by_alias)})")
    info = svc.for_account(account).ice.get_job(job_id)
    with svc.sessions.begin() as s:
        upsert_job(s, info, track=True, account=account)
        s.execute(update(Job).where(Job.job_id == job_id).values(untracked=False, tracked=True))
    return info


def untrack(svc: Services, job_id: str) -> bool:
    """Stop sweeping the job; False if we never knew it. The cursor is kept, so `track` resumes from it."""
    with svc.sessions.begin() as s:
        res = s.execute(update(Job).where(Job.job_id == job_id).values(tracked=False, untracked=True))
        return bool(res.rowcount)  # type: ignore[attr-defined]


def points_here(callback_url: str | None, public_url: str) -> bool:
    """Same scheme and host (case-insensitive), and the callback path lies under the public URL's path."""
    if not callback_url:
        return False
    cb, base = urlsplit(callback_url.strip()), urlsplit(public_url.strip())
    if (cb.scheme.lower(), cb.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
        return False
    prefix = base.path.rstrip("/")
    return cb.path == prefix or cb.path.startswith(prefix + "/")


def discover(svc: Services, ignored: set[str] | None = None) -> list[str]:
    """Track every `started` job whose CallbackUrl points at RECEIVER_PUBLIC_URL; returns the newly tracked.

    ListLiveSnapshotJobs items carry no CallbackUrl, so each candidate costs one (cached) GetLiveSnapshotJob;
    ``ignored`` remembers jobs that are not ours across passes (a job's CallbackUrl cannot change).
    """
    public = svc.settings.public_url
    if not public:
        log.warning("RECEIVER_DISCOVER_JOBS needs RECEIVER_PUBLIC_URL to recognise this receiver's jobs")
        return []
    ignored = ignored if ignored is not None else set()
    found: list[str] = []
    for account in svc.account_list():
        found.extend(_discover(svc, account.alias, public, ignored))
    return found


def _discover(svc: Services, account: str, public: str, ignored: set[str]) -> list[str]:
    asvc = svc.for_account(account)
    with svc.sessions() as s:
        known = set(s.execute(select(Job.job_id).where(Job.tracked.is_(True))).scalars())
    found: list[str] = []
    page = 1
    while True:
        jobs, total = asvc.ice.list_jobs(page_no=page, page_size=100, status="started")
        for summary in jobs:
            if summary.job_id in known or summary.job_id in ignored:
                continue
            try:
                info = asvc.ice.get_job(summary.job_id)
            except JobNotFound:
                continue  # deleted between the two calls
            if not points_here(info.callback_url, public):
                ignored.add(info.job_id)
                continue
            try:
                with svc.sessions.begin() as s:
                    upsert_job(s, info, track=True, account=account)
            except Rejected as e:  # a job id listed by two accounts: the first owner keeps it
                log.warning("discovery: %s", e)
                ignored.add(info.job_id)
                continue
            found.append(info.job_id)
        if not jobs or page * 100 >= total:
            return found
        page += 1
