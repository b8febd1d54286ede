"""`receiver backfill-signals`: compute health signals for snapshots indexed before they existed.

Reads each snapshot's smallest stored thumbnail (never the OSS original), in id order, in batches that
commit as they go, so it can be interrupted and re-run; rows that already have signals are skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select, update

from receiver.db.models import Snapshot, Thumbnail
from receiver.exceptions import ObjectNotFound
from receiver.media.signals import columns_from_bytes
from receiver.services import Services

log = logging.getLogger(__name__)


@dataclass
class BackfillResult:
    updated: int = 0
    missing: int = 0  # no readable thumbnail: left null (health treats them as signal-less frames)


def backfill(svc: Services, batch: int = 200, job_id: str | None = None) -> BackfillResult:
    result = BackfillResult()
    after = 0
    while True:
        q = select(Snapshot.id).where(Snapshot.luma.is_(None), Snapshot.id > after)
        if job_id is not None:
            q = q.where(Snapshot.job_id == job_id)
        with svc.sessions() as s:
            ids = list(s.execute(q.order_by(Snapshot.id).limit(batch)).scalars())
            thumbs = {t.snapshot_id: t for t in s.execute(
                select(Thumbnail).where(Thumbnail.snapshot_id.in_(ids)).order_by(Thumbnail.width.desc())
            ).scalars()} if ids else {}  # the smallest width wins: it is inserted last
        if not ids:
            return result
        values = []
        for sid in ids:
            t = thumbs.get(sid)
            try:
                data = svc.thumbs.get(t.storage_key) if t is not None else None
            except ObjectNotFound:
                data = None
            if data is None:
                log.warning("snapshot %s has no readable thumbnail; its signals stay empty", sid)
                result.missing += 1
                continue
            values.append({"sid": sid, **columns_from_bytes(data)})
        if values:
            with svc.sessions.begin() as s:
                for v in values:
                    sid = v.pop("sid")
                    s.execute(update(Snapshot).where(Snapshot.id == sid).values(**v))
            result.updated += len(values)
        after = ids[-1]
