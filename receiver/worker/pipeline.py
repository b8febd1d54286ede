"""process_event(event_id): verify -> resolve -> fetch -> thumbnail -> store -> index.

Idempotent and keyed by the event id, so threads, Celery, the reconciler and replay all call this one
function. A claim (status + lease) makes concurrent calls for one event harmless; unique constraints make
a retried or raced ingest index each snapshot once.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from dataclasses import fields, replace
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, Connection, bindparam, false, null, or_, select, true, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from receiver.db import outbox
from receiver.db.engine import insert_for, single_statement
from receiver.db.models import Event, EventSnapshot, EventStatus, Job, MessageType, Snapshot, utcnow
from receiver.exceptions import (
    CredentialUnavailable,
    ImageError,
    JobNotFound,
    ObjectNotFound,
    ReceiverError,
    Rejected,
    StoreError,
    Transient,
)
from receiver.services import Services
from receiver.web.serialize import event_json
from receiver.worker.heartbeat import heartbeat, mark_claimer
from receiver.worker.index import IDENTITY_WINDOW_MS, PROBE_WINDOW_MS, prepare, upsert_job, write_index
from receiver.worker.index_postgres import postgres_done_bypass
from receiver.worker.resolve import resolve_targets
from receiver.worker.types import SKIPPED, Claimed, Outcome, Prepared, Target

log = logging.getLogger(__name__)


# Hosts' clocks differ a little: a worker a few ms behind the web process must not find a fresh event
# "not due yet" (and drop its only message). Backoff delays are seconds long, so this costs nothing.
CLOCK_TOLERANCE = dt.timedelta(seconds=2)


_PROBED = ("probed", "probed_row")


def _probe() -> Any:
    # On PostgreSQL a callback that names its object is probed here, in the claim's round trip, instead of by a
    # SELECT of its own (index.prepare decides whether the answer settles it): [id, captured_at_ms] of a row,
    # as one array so both come from the same row, by the identity index (no ORDER BY to steer the planner to
    # the job's time index). Within PROBE_WINDOW_MS of the callback's time, so PostgreSQL reads a few days'
    # partitions. (Not on SQLite: no round trip to save, and SQLAlchemy renders SQLite's RETURNING columns
    # unqualified, which would uncorrelate the subquery.)
    return (select(postgresql.array([Snapshot.id, Snapshot.captured_at_ms]))
            .where(Snapshot.job_id == Event.job_id, Snapshot.oss_bucket == Event.oss_bucket,
                   Snapshot.oss_object == Event.oss_object,
                   Snapshot.captured_at_ms.between(Event.create_timestamp_ms - PROBE_WINDOW_MS,
                                                   Event.create_timestamp_ms + PROBE_WINDOW_MS))
            .limit(1).scalar_subquery())


# The per-event statements are built once, with bound parameters: constructing one costs more than running
# it (SQLAlchemy caches the compiled form, but not the construction).
@cache
def _claim_statement(dialect: str) -> Executable:
    probe = (true(), _probe()) if dialect == "postgresql" else (false(), null())
    return (
        update(Event)
        .where(
            Event.id == bindparam("event_id"),
            Event.next_attempt_at <= bindparam("due"),
            or_(Event.status == EventStatus.PENDING,
                (Event.status == EventStatus.PROCESSING) & (Event.lease_until < bindparam("now"))),
        )
        .values(status=EventStatus.PROCESSING, attempts=Event.attempts + 1, lease_until=bindparam("lease"),
                updated_at=bindparam("now"))
        # Claimed's fields in their order: a row becomes Claimed(*row).
        .returning(*(getattr(Event, f.name) for f in fields(Claimed) if f.name not in _PROBED), *probe)
    )


@cache
def _finish_statement(retry: bool, refund: bool = False) -> Executable:
    values: dict[str, Any] = {"status": bindparam("new_status"), "last_error": bindparam("error"), "lease_until": None,
                              "updated_at": bindparam("now")}
    if retry:
        values["next_attempt_at"] = bindparam("next_attempt_at")
    if refund:
        # The attempt sent nothing (no usable credential): it does not count towards max_attempts.
        values["attempts"] = Event.attempts - 1
    return (
        update(Event)
        .where(Event.id == bindparam("event_id"), Event.status == EventStatus.PROCESSING,
               Event.attempts == bindparam("claimed_attempts"))
        .values(values)
    )


@cache
def _link_statement(dialect: str) -> Executable:
    # A re-run of an event whose earlier attempt linked the same snapshot before dying: keep one link. The
    # link carries the snapshot's captured_at_ms (the partition key of event_snapshots), read from its row,
    # which is known to lie within index.IDENTITY_WINDOW_MS of a capture time (lo, hi): PostgreSQL reads those
    # days' partitions only, not every one.
    source = select(bindparam("event_id", type_=BigInteger), Snapshot.id, Snapshot.captured_at_ms).where(
        Snapshot.id == bindparam("snapshot_id"), Snapshot.captured_at_ms.between(bindparam("lo"), bindparam("hi")))
    return insert_for(dialect)(EventSnapshot).from_select(
        ["event_id", "snapshot_id", "captured_at_ms"], source).on_conflict_do_nothing()


def _claim(svc: Services, event_id: int) -> Claimed | None:
    mark_claimer(svc)  # on a SQLite file: this process may hold claims from now on (see worker/heartbeat.py)
    now = utcnow()
    lease = now + dt.timedelta(seconds=svc.settings.lease_seconds)
    params = {"event_id": event_id, "due": now + CLOCK_TOLERANCE, "now": now, "lease": lease}
    try:
        row = _run_claim(svc, params)
    except DBAPIError as e:
        if not e.connection_invalidated:
            raise
        # The connection died since its last use (the server restarted within PING_AFTER_IDLE_S, db/engine.py):
        # SQLAlchemy has invalidated the pool; the claim changed nothing, so it runs again on a new connection.
        row = _run_claim(svc, params)
    if row is None:
        return None
    ev = Claimed(*row)
    # PostgreSQL's array comes as a list: a tuple keeps Claimed hashable.
    if ev.probed_row is None:
        return ev
    sid, at = ev.probed_row
    return replace(ev, probed_row=(sid, at))


def _run_claim(svc: Services, params: dict[str, Any]) -> Any:
    with single_statement(svc.engine).begin() as conn:
        return conn.execute(_claim_statement(conn.dialect.name), params).one_or_none()


def _finish(svc: Services, ev: Claimed, status: EventStatus, error: str | None, retry_in: float | None = None,
            refund: bool = False) -> bool:
    """Record the result, but only while we still hold the claim (a reclaimed event is someone else's)."""
    # A failed or rejected event also writes its event.failed message: two statements, one transaction.
    announces = status in (EventStatus.FAILED, EventStatus.REJECTED)
    with (svc.engine if announces else single_statement(svc.engine)).begin() as conn:
        return _set_status(conn, ev, status, error, retry_in, refund)


def _finish_done(svc: Services, ev: Claimed, prepared: list[Prepared]) -> tuple[int, ...]:
    """Index the event's objects and mark it done in one transaction (one commit per frame, not two)."""
    widths = svc.settings.thumbnail_widths
    with svc.metrics.stage("index"), svc.engine.begin() as conn:
        if conn.dialect.name == "postgresql" and len(prepared) == 1 and prepared[0].snapshot is not None:
            # The common case in fewer round trips (a BYPASS, worker/index_postgres.py): the same rows.
            sid, must_link = postgres_done_bypass(conn, ev, prepared[0], ev.account, widths)
            if must_link:
                _link(conn, ev.id, {sid: prepared[0].snapshot["captured_at_ms"]})
            return (sid,)
        return index_and_finish(conn, ev, prepared, widths)


def index_and_finish(conn: Connection, ev: Claimed, prepared: list[Prepared], widths: tuple[int, ...]
                     ) -> tuple[int, ...]:
    """The done-transaction's statements on ``conn``, any database, any number of objects."""
    # Snapshot id -> a capture time its row lies near (the found row's own when found before fetching).
    near: dict[int, int] = {}
    for p in prepared:
        sid = write_index(conn, p, ev.account, widths)
        at = p.snapshot["captured_at_ms"] if p.snapshot is not None else p.existing_at
        assert at is not None  # prepare() hands a found row's capture time with its id
        near.setdefault(sid, at)
    # The rows are facts whoever holds the claim, so they are committed either way; the links are the
    # owner's to write.
    if _set_status(conn, ev, EventStatus.DONE, None, None):
        _link(conn, ev.id, near)
    return tuple(near)


def _link(conn: Connection, event_id: int, near: dict[int, int]) -> None:
    window = IDENTITY_WINDOW_MS
    links = [{"event_id": event_id, "snapshot_id": sid, "lo": at - window, "hi": at + window}
             for sid, at in near.items()]
    if links:  # (an empty list would run the INSERT once, without parameters)
        conn.execute(_link_statement(conn.dialect.name), links)


def _set_status(conn: Connection, ev: Claimed, status: EventStatus, error: str | None, retry_in: float | None,
                refund: bool = False) -> bool:
    now = utcnow()
    params: dict[str, object] = {"event_id": ev.id, "claimed_attempts": ev.attempts, "new_status": status,
                                 "error": error, "now": now}
    if retry_in is not None:
        params["next_attempt_at"] = now + dt.timedelta(seconds=retry_in)
    if conn.execute(_finish_statement(retry_in is not None, refund), params).rowcount != 1:
        log.warning("event %s: lost its claim before finishing; leaving it to the new owner", ev.id)
        return False
    if status in (EventStatus.FAILED, EventStatus.REJECTED):
        _announce_failure(conn, ev.id)
    return True


def _announce_failure(conn: Connection, event_id: int) -> None:
    # Rare path: the ORM on the same connection (same transaction) gives the event item of 3.2 as the API has it.
    with Session(bind=conn) as s:
        event = s.get(Event, event_id)
        assert event is not None
        outbox.record(conn, MessageType.EVENT_FAILED, event_json(event), job_id=event.job_id, account=event.account)


def backoff_seconds(svc: Services, attempts: int, retry_after: float | None) -> float:
    s = svc.settings
    base = min(s.retry_max_seconds, s.retry_base_seconds * (2 ** max(0, attempts - 1)))
    # Full-range jitter around the base spreads a burst of throttled events instead of retrying in step.
    delay = base * random.uniform(0.5, 1.5)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, s.retry_max_seconds)


def _describe(e: BaseException) -> str:
    code = getattr(e, "code", None) or type(e).__name__
    return f"{code}: {e}"[:2000]


def process_event(svc: Services, event_id: int) -> Outcome:
    ev = _claim(svc, event_id)
    if ev is None:
        return Outcome(SKIPPED)
    if ev.attempts > svc.settings.max_attempts:
        # Earlier attempts never finished (their leases expired): this event kills or hangs its worker
        # (OOM, segfault in a decoder). Stop handing it out.
        error = f"gave up: {ev.attempts - 1} attempts never finished (worker killed or hung?)"
        _finish(svc, ev, EventStatus.FAILED, error)
        return Outcome(EventStatus.FAILED)
    # The lease is short; the heartbeat renews it while this runs, so only a dead worker's claim runs out.
    with svc.metrics.stage("process"), heartbeat(svc).holding(ev.id, ev.attempts):
        return _process_claimed(svc, ev)


def _process_claimed(svc: Services, ev: Claimed) -> Outcome:
    try:
        # Indexing shares the done-transaction; a database error there is retried like any other.
        snapshot_ids = _finish_done(svc, ev, _run(svc, ev))
    except (Rejected, JobNotFound) as e:
        log.info("event %s rejected: %s", ev.id, e)
        _finish(svc, ev, EventStatus.REJECTED, _describe(e))
        return Outcome(EventStatus.REJECTED)
    except (ImageError, ObjectNotFound, StoreError) as e:
        log.info("event %s failed: %s", ev.id, e)
        _finish(svc, ev, EventStatus.FAILED, _describe(e))
        return Outcome(EventStatus.FAILED)
    except CredentialUnavailable as e:
        # Waits like throttling, however long the credential takes to come back; never fails the event.
        log.info("event %s: %s (waiting for credentials)", ev.id, e)
        delay = backoff_seconds(svc, 2, e.retry_after)
        _finish(svc, ev, EventStatus.PENDING, _describe(e), retry_in=delay, refund=True)
        return Outcome(EventStatus.PENDING, retry_in=delay)
    except Exception as e:
        transient = isinstance(e, Transient)
        if not transient and not isinstance(e, ReceiverError):
            log.exception("event %s: unexpected error (will retry)", ev.id)
        else:
            log.info("event %s: %s (attempt %s)", ev.id, e, ev.attempts)
        if ev.attempts >= svc.settings.max_attempts:
            _finish(svc, ev, EventStatus.FAILED, f"gave up after {ev.attempts} attempts: {_describe(e)}")
            return Outcome(EventStatus.FAILED)
        delay = backoff_seconds(svc, ev.attempts, e.retry_after if isinstance(e, Transient) else None)
        _finish(svc, ev, EventStatus.PENDING, _describe(e), retry_in=delay)
        return Outcome(EventStatus.PENDING, retry_in=delay)
    return Outcome(EventStatus.DONE, snapshot_ids=snapshot_ids)


def _owner(svc: Services, job_id: str) -> str | None:
    """The account a job belongs to, once it has a row (an owner never changes, so it is remembered)."""
    owner = svc.job_accounts.get(job_id)
    if owner is None:
        with svc.read_engine.connect() as conn:
            owner = conn.execute(_owner_statement(), {"job_id": job_id}).scalar_one_or_none()
        if owner is not None:
            svc.job_accounts[job_id] = owner
    return owner


@cache
def _owner_statement() -> Executable:
    return select(Job.account).where(Job.job_id == bindparam("job_id"))


def _check_account(svc: Services, ev: Claimed) -> Services:
    """The event's account's view of the Services, once the event may be that account's at all: checked
    before any ICE or OSS request, so a foreign event costs nothing but a lookup."""
    asvc = svc.for_account(ev.account)  # Transient when the account is no longer configured: the event waits
    if ev.user_id:
        uid = svc.account_list().by_alias[ev.account].uid if ev.account in svc.account_list() else None
        if uid is not None and ev.user_id != uid:
            raise Rejected(f"callback UserId {ev.user_id!r} is not account {ev.account!r} ({uid})")
    owner = _owner(svc, ev.job_id)
    if owner is not None and owner != ev.account:
        raise Rejected(f"job belongs to account {owner!r}, not {ev.account!r}")
    return asvc


def _run(svc: Services, ev: Claimed) -> list[Prepared]:
    svc = _check_account(svc, ev)
    with svc.metrics.stage("verify"):
        job = svc.ice.get_job(ev.job_id)
    # The gateway hands back the same JobInfo object until its cache entry expires; writing the job row again
    # for every event of a job was a measurable share of a frame (bench/pipeline.py), for no change. fetched_at
    # then says when ICE was asked, which is what it means.
    upserted = svc.upserted_jobs
    if upserted.get(job.job_id) is not job:
        with svc.sessions.begin() as s:
            upsert_job(s, job, track=True, account=ev.account)  # Rejected if another account got there first
        upserted[job.job_id] = job
        svc.job_accounts[job.job_id] = ev.account
    with svc.metrics.stage("resolve"):
        targets: list[Target] = resolve_targets(svc, job, ev)
    if len(targets) == 1:
        return [prepare(svc, job, targets[0], ev)]
    # A bare-JobId callback names several objects: one missing or bad object (the overwrite object not yet
    # written, one broken frame) must not cost the others. Transient errors still retry the whole event
    # (ingest is idempotent); the event fails only when nothing at all could be indexed.
    done: list[Prepared] = []
    errors: list[ReceiverError] = []
    for t in targets:
        try:
            done.append(prepare(svc, job, t))
        except (ObjectNotFound, ImageError, Rejected) as e:
            log.info("event %s: %s skipped: %s", ev.id, t.key, e)
            errors.append(e)
        except Exception:
            # The event will be retried, but an overwrite object fetched already may be rewritten by then:
            # index what is in hand first, as each object was indexed on its own before.
            if done:
                with svc.engine.begin() as conn:
                    for p in done:
                        write_index(conn, p, ev.account, svc.settings.thumbnail_widths)
            raise
    if not done and errors:
        raise errors[0]
    return done
