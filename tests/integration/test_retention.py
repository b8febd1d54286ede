"""prune: exactly the old snapshots, their thumbnail files and links, and old done/rejected events."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from receiver.config import ConfigError, Settings
from receiver.db.models import Event, EventSnapshot, Snapshot, Thumbnail
from receiver.ops.retention import parse_duration, prune
from receiver.services import Services
from receiver.sim.frames import make_frame
from receiver.timeutil import now_ms
from receiver.worker.dispatch import drain
from tests.integration.test_reconcile import cli_settings
from tests.support.builders import BUCKET, Cli, callback_body, put_snapshot

DAY = 86_400_000


@pytest.mark.parametrize(("text", "seconds"), [("12h", 43200), ("30d", 2592000), ("2w", 1209600), ("90s", 90),
                                               ("45m", 2700), ("7", 604800), ("1.5d", 129600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "says"), [
    ("", "positive duration"), ("0d", "positive duration"), ("-1d", "positive duration"), ("3y", "positive duration"),
    ("d", "positive duration"), ("12 hours", "positive duration"),
    ("\u0667d", "positive duration"),  # another script's 7: float() would read it
    # Older than a thousand years: "now minus it" is no date a prune can print, so it is refused up front.
    ("365001d", "at most 365000 days"), ("2000000d", "at most 365000 days"), ("9" * 400, "at most 365000 days"),
])
def test_parse_duration_refuses(text, says):
    with pytest.raises(ValueError, match=says):
        parse_duration(text)


def test_the_longest_duration_is_accepted():
    assert parse_duration("365000d") == 365000 * 86400


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "365001", "1e9"])
def test_settings_refuse_a_retention_in_days_no_prune_could_apply(value):
    with pytest.raises(ConfigError, match="RECEIVER_RETENTION_DAYS must be between 0"):
        Settings.from_env({"RECEIVER_RETENTION_DAYS": value})


def index(client, svc: Services, fake_ice, fake_oss, ages_days: list[float]) -> dict[float, int]:
    now = now_ms()
    frame = make_frame(seed=5, width=320, height=180)
    for age in ages_days:
        ms = now - int(age * DAY)
        key = put_snapshot(fake_oss, fake_ice, ms, frame)
        assert client.post("/callbacks/live-snapshot", data=callback_body(key, ms)).status_code == 200
    drain(svc)
    with svc.sessions() as s:
        rows = s.execute(select(Snapshot.id, Snapshot.captured_at_ms)).all()
    return {round((now - at) / DAY, 3): sid for sid, at in rows}


def thumb_keys(svc: Services, snapshot_ids: list[int]) -> list[str]:
    with svc.sessions() as s:
        return list(s.execute(select(Thumbnail.storage_key).where(Thumbnail.snapshot_id.in_(snapshot_ids))).scalars())


def count(svc: Services, model: type) -> int:
    with svc.sessions() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def test_prune_removes_exactly_the_old_rows_and_files(client, svc, fake_ice, fake_oss):
    by_age = index(client, svc, fake_ice, fake_oss, [40, 35, 31, 29, 1, 0.1])
    old = [by_age[40], by_age[35], by_age[31]]
    young = [by_age[29], by_age[1], by_age[0.1]]
    old_keys, young_keys = thumb_keys(svc, old), thumb_keys(svc, young)
    assert len(old_keys) == 6 and all(svc.thumbs.exists(k) for k in old_keys + young_keys)
    # Events are as old as their arrival: age the ones for old snapshots, and one failed event.
    with svc.sessions.begin() as s:
        old_events = list(s.execute(select(EventSnapshot.event_id).where(EventSnapshot.snapshot_id.in_(old)))
                          .scalars())
        s.execute(update(Event).where(Event.id.in_(old_events))
                  .values(received_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=40)))
        young_event = s.execute(select(EventSnapshot.event_id).where(EventSnapshot.snapshot_id == young[0])).scalar()
        s.execute(update(Event).where(Event.id == young_event)
                  .values(status="failed", received_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=40)))

    # Two cached storyboard sheets, one rendered 40 days ago.
    for name, days in (("old", 40), ("new", 1)):
        svc.thumbs.put(f"storyboards/ab/{name}.jpg", b"sheet", "image/jpeg")
        os.utime(svc.thumbs.path_for(f"storyboards/ab/{name}.jpg"), (time.time() - days * 86400,) * 2)

    dry = prune(svc, parse_duration("30d"), dry_run=True)
    assert (dry.snapshots, dry.thumbnails, dry.events, dry.storyboards) == (3, 6, 3, 1)
    assert count(svc, Snapshot) == 6 and all(svc.thumbs.exists(k) for k in old_keys)

    done = prune(svc, parse_duration("30d"), batch=2)  # several batches
    assert (done.snapshots, done.thumbnails, done.events, done.storyboards) == (3, 6, 3, 1)
    assert not svc.thumbs.exists("storyboards/ab/old.jpg") and svc.thumbs.exists("storyboards/ab/new.jpg")
    with svc.sessions() as s:
        assert sorted(s.execute(select(Snapshot.id)).scalars()) == sorted(young)
        assert s.execute(select(func.count()).select_from(Thumbnail)).scalar_one() == 6
        assert set(s.execute(select(EventSnapshot.snapshot_id)).scalars()) == set(young)
        statuses = sorted(s.execute(select(Event.status)).scalars())
    assert statuses == ["done", "done", "failed"]  # the failed one stays, however old
    assert not any(svc.thumbs.exists(k) for k in old_keys)
    assert all(svc.thumbs.exists(k) for k in young_keys)
    assert fake_oss.keys(BUCKET)  # the sources in the job's bucket are never touched
    assert prune(svc, parse_duration("30d")).snapshots == 0


def test_a_store_that_cannot_list_does_not_stop_the_prune(client, svc, fake_ice, fake_oss, monkeypatch, caplog):
    # An OSS policy without ListObjects: sheets cannot be found, snapshots and events are pruned anyway.
    from receiver.exceptions import StoreError

    by_age = index(client, svc, fake_ice, fake_oss, [40, 1])

    def cannot_list(prefix: str, before: float, *, dry_run: bool = False) -> int:
        raise StoreError("oss://thumbs/storyboards/ (list): AccessDenied (status 403, request -)")

    monkeypatch.setattr(svc.thumbs, "delete_older_than", cannot_list)
    done = prune(svc, parse_duration("30d"))
    assert (done.snapshots, done.storyboards) == (1, 0)
    with svc.sessions() as s:
        assert list(s.execute(select(Snapshot.id)).scalars()) == [by_age[1]]
    assert "cached storyboard sheets not pruned" in caplog.text and "AccessDenied" in caplog.text


def test_cli_prune_dry_run_prints_and_keeps(client, svc, settings, fake_ice, fake_oss):
    index(client, svc, fake_ice, fake_oss, [10, 3])
    runner = Cli(cli_settings(settings))
    res = runner.invoke("prune", "--older-than", "1w", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "job-0001: 1 snapshots" in res.output and "would delete 1 snapshots (2 thumbnail files)" in res.output
    assert count(svc, Snapshot) == 2
    res = runner.invoke("prune", "--older-than", "1w")
    assert res.exit_code == 0 and "deleted 1 snapshots" in res.output
    assert count(svc, Snapshot) == 1
    assert runner.invoke("prune", "--older-than", "soon").exit_code == 2


# --- an OSS thumbnail store that fails mid-prune (issue 14 item 6) ---------------------------------------

THUMBS = "thumbs"


def oss_app(settings, fake_oss):
    from receiver.services import services
    from tests.support.builders import OSS_ENDPOINT, build_app

    fake_oss.create_bucket(THUMBS)
    s = settings.with_(thumbnail_store=f"oss://{THUMBS}/t?endpoint={OSS_ENDPOINT}")
    app = build_app(s)
    return s, app, services(app)


def error_lines(res) -> list[str]:
    return [line for line in res.output.splitlines() if line.startswith("error:")]


def test_cli_prune_with_an_unparseable_listing_says_what_it_did_and_a_rerun_finishes(settings, fake_ice, fake_oss):
    s, app, svc = oss_app(settings, fake_oss)
    try:
        by_age = index(app.test_client(), svc, fake_ice, fake_oss, [40, 35, 1])
        old_keys, young_keys = thumb_keys(svc, [by_age[40], by_age[35]]), thumb_keys(svc, [by_age[1]])
        now = time.time()
        fake_oss.put(THUMBS, "t/storyboards/ab/old.jpg", b"sheet", last_modified=now - 40 * 86400)
        fake_oss.put(THUMBS, "t/storyboards/ab/new.jpg", b"sheet", last_modified=now - 86400)
        runner = Cli(cli_settings(s))

        fake_oss.break_listing_next(1)  # the third-party server's S3-shaped listing: oss2 raises RuntimeError
        res = runner.invoke("prune", "--older-than", "30d")
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output and not isinstance(res.exception, RuntimeError)
        # What it did, then one line for what it could not do.
        assert "job-0001: 2 snapshots" in res.output
        assert "deleted 2 snapshots (4 thumbnail files)" in res.output and "run it again" in res.output
        [err] = error_lines(res)
        assert err.startswith("error: cached storyboard sheets not pruned: oss://thumbs/t/storyboards/ (list)")
        assert "unreadable answer (RuntimeError: parse xml" in err
        assert count(svc, Snapshot) == 1
        assert sorted(fake_oss.keys(THUMBS)) == sorted(
            [f"t/{k}" for k in young_keys] + ["t/storyboards/ab/new.jpg", "t/storyboards/ab/old.jpg"])

        again = runner.invoke("prune", "--older-than", "30d")
        assert again.exit_code == 0, again.output
        assert "deleted 0 snapshots (0 thumbnail files)" in again.output
        assert "and 1 cached storyboard sheets" in again.output and not error_lines(again)
        assert sorted(fake_oss.keys(THUMBS)) == sorted([f"t/{k}" for k in young_keys] + ["t/storyboards/ab/new.jpg"])
        assert not any(f"t/{k}" in fake_oss.keys(THUMBS) for k in old_keys)
    finally:
        svc.close()


def test_prune_deletes_files_before_rows_so_a_failed_delete_leaves_nothing_unfindable(settings, fake_ice, fake_oss):
    s, app, svc = oss_app(settings, fake_oss)
    try:
        by_age = index(app.test_client(), svc, fake_ice, fake_oss, [40, 35, 31, 1])
        young_keys = thumb_keys(svc, [by_age[1]])
        with svc.sessions.begin() as ses:
            ses.execute(update(Event).values(received_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=40)))
        runner = Cli(cli_settings(s))

        # The first batch's delete fails: its rows stay, so its files stay findable; events (rows only) are
        # pruned all the same.
        fake_oss.fail_next("POST", 1)
        res = runner.invoke("prune", "--older-than", "30d")
        assert res.exit_code == 1, res.output
        [err] = error_lines(res)
        assert err.startswith("error: snapshots not pruned: ") and "InternalError" in err
        assert "deleted 0 snapshots (0 thumbnail files), 4 done/rejected events" in res.output
        assert count(svc, Snapshot) == 4

        # A crash after a batch's files went and before its rows did: the next run finds the rows, deletes
        # the (already missing) files again and finishes.
        for k in thumb_keys(svc, [by_age[40]]):
            fake_oss.delete(THUMBS, f"t/{k}")
        done = prune(svc, parse_duration("30d"), batch=2)
        assert (done.snapshots, done.thumbnails, done.errors) == (3, 6, [])
        with svc.sessions() as ses:
            assert list(ses.execute(select(Snapshot.id)).scalars()) == [by_age[1]]
        # No orphan: exactly the young snapshot's thumbnails are left in the store.
        assert fake_oss.keys(THUMBS) == sorted(f"t/{k}" for k in young_keys)
    finally:
        svc.close()


def test_prune_reports_a_database_failure_with_what_it_did(client, svc, fake_ice, fake_oss, monkeypatch):
    from receiver.ops import retention
    from receiver.ops.retention import PruneIncomplete

    index(client, svc, fake_ice, fake_oss, [40, 1])

    def db_gone(*args, **kwargs):
        # Not a store error: the prune stops there, and says what it had done.
        raise OperationalError("DELETE FROM events", {}, Exception("database is locked"))

    monkeypatch.setattr(retention, "_prune_events", db_gone)
    with pytest.raises(PruneIncomplete, match="events not pruned: OperationalError: .*database is locked") as info:
        prune(svc, parse_duration("30d"))
    assert "\n" not in str(info.value)
    # The command prints the same: what was done, then the error on one line, exit 1, no traceback.
    res = Cli(cli_settings(svc.settings)).invoke("prune", "--older-than", "30d")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "deleted 0 snapshots" in res.output
    [err] = error_lines(res)
    assert err.startswith("error: events not pruned: OperationalError: ")
    assert (info.value.result.snapshots, info.value.result.thumbnails) == (1, 2)
