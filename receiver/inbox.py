"""Recording events in the inbox table, deduplicated by (job, identity) even under concurrent delivery."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .callback_parse import EventItem
from .models import Event, utcnow


@dataclass(frozen=True)
class Recorded:
    event_ids: list[int]  # in item order, existing ids for duplicates
    new_ids: list[int]


def _insert_for(session: Session):  # type: ignore[no-untyped-def]
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise RuntimeError(f"unsupported database dialect {name!r}")


def record_events(session: Session, items: list[EventItem], origin: str = "callback") -> Recorded:
    """Insert what is new; ON CONFLICT DO NOTHING makes a concurrent duplicate a no-op, not an error."""
    insert = _insert_for(session)
    now = utcnow()
    ids: list[int] = []
    new: list[int] = []
    for item in items:
        stmt = (
            insert(Event)
            .values(
                job_id=item.job_id,
                identity=item.identity,
                origin=origin,
                status="pending",
                attempts=0,
                oss_object=item.oss_object,
                oss_bucket=item.oss_bucket,
                oss_endpoint=item.oss_endpoint,
                create_timestamp_ms=item.create_timestamp_ms,
                is_overlay=item.is_overlay,
                raw_body=item.raw[:65536],
                received_at=now,
                updated_at=now,
                next_attempt_at=now,
            )
            .on_conflict_do_nothing(index_elements=["job_id", "identity"])
            .returning(Event.id)
        )
        new_id = session.execute(stmt).scalar_one_or_none()
        if new_id is None:
            existing = session.execute(
                select(Event.id).where(Event.job_id == item.job_id, Event.identity == item.identity)
            ).scalar_one()
            ids.append(existing)
        else:
            ids.append(new_id)
            new.append(new_id)
    return Recorded(event_ids=ids, new_ids=new)
