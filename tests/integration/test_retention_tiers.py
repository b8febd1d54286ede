"""RECEIVER_RETENTION through the app: the tiers keep exactly the first snapshot per job per clock bucket, the
rest go with their thumbnail files, the dry run changes nothing, a second prune changes nothing.
tests/e2e/test_partitions.py runs these same tests on PostgreSQL (where whole days go as partitions)."""

from __future__ import annotations

from sqlalchemy import func, select

from receiver.db import partitions
from receiver.db.models import EventSnapshot, Snapshot, Thumbnail
from receiver.ops.retention import apply_retention
from receiver.services import Services
from receiver.tiers import DAY_MS, kept, parse_retention, plan
from receiver.timeutil import now_ms
from receiver.worker.dispatch import drain
from tests.support.builders import BUCKET, OSS_ENDPOINT, Cli, callback_body, put_snapshot

M, H = 60_000, 3_600_000
TIERS = "1d:all,3d:1m,5d:1h"


def moment() -> int:
    """Noon today (UTC): the tests' "now", so every tier boundary falls where the history expects it."""
    return now_ms() // DAY_MS * DAY_MS + 12 * H


def history(now: int) -> list[tuple[str, int]]:
    a, b = now - 2 * DAY_MS, now - 4 * DAY_MS  # a minute in the 1m tier, an hour in the 1h tier
    return [
        ("job-0001", now - 2 * H), ("job-0001", now - 2 * H + 1), ("job-0001", now - 2 * H + 2),
        ("job-0001", a + 10_000), ("job-0001", a + 5_000), ("job-0001", a + 50_000), ("job-0001", a + 65_000),
        ("job-0002", a + 30_000), ("job-0002", a + 20_000),
        ("job-0001", b + M), ("job-0001", b + 10 * M), ("job-0001", b + 59 * M), ("job-0001", b + 61 * M),
        ("job-0001", now - 5 * DAY_MS - 6 * H), ("job-0001", now - 5 * DAY_MS - 6 * H + 1),
        ("job-0001", now - 5 * DAY_MS - 13 * H), ("job-0002", now - 7 * DAY_MS), ("job-0002", now - 7 * DAY_MS + H),
    ]


def index_history(client, svc: Services, fake_ice, fake_oss, frame: bytes, now: int) -> None:
    fake_ice.add_job("job-0002", bucket=BUCKET, endpoint=OSS_ENDPOINT)
    for job, ms in history(now):
        key = put_snapshot(fake_oss, fake_ice, ms, frame, job=job)
        assert client.post("/callbacks/live-snapshot", data=callback_body(key, ms, job=job)).status_code == 200
    drain(svc)


def rows(svc: Services) -> list[tuple[int, str, int]]:
    with svc.sessions() as s:
        return [tuple(r) for r in s.execute(select(Snapshot.id, Snapshot.job_id, Snapshot.captured_at_ms)
                                            .order_by(Snapshot.id))]  # type: ignore[misc]


def keys_by_snapshot(svc: Services) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    with svc.sessions() as s:
        for sid, key in s.execute(select(Thumbnail.snapshot_id, Thumbnail.storage_key)):
            out.setdefault(sid, []).append(key)
    return out


def test_tiers_keep_the_first_per_job_per_clock_bucket_and_remove_the_rest_with_their_files(
        client, svc: Services, fake_ice, fake_oss, frame):
    now = moment()
    index_history(client, svc, fake_ice, fake_oss, frame, now)
    before = rows(svc)
    assert len(before) == len(history(now))
    keys = keys_by_snapshot(svc)
    assert all(len(k) == 2 for k in keys.values())  # two widths each
    expected = kept(before, plan(parse_retention(TIERS), now))
    at = {sid: ms for sid, _, ms in before}
    # By hand, what the reference says: 3 of the last day, 2 + 1 of the minute (2 jobs), 2 of the hour, the
    # first at 5 d 6 h, and nothing older than the midnight 5.5 days back.
    assert sorted(at[i] - now for i in expected) == sorted([
        -2 * H, -2 * H + 1, -2 * H + 2, -2 * DAY_MS + 5_000, -2 * DAY_MS + 65_000, -2 * DAY_MS + 20_000,
        -4 * DAY_MS + M, -4 * DAY_MS + 61 * M, -5 * DAY_MS - 6 * H])

    dry = apply_retention(svc, parse_retention(TIERS), dry_run=True, now=now)
    assert rows(svc) == before and keys_by_snapshot(svc) == keys  # nothing changed
    gone = len(before) - len(expected)
    assert sum(dry.thinned.values()) + dry.snapshots == gone
    assert dry.thinned == {"3d:1m": 3, "5d:1h": 3}

    result = apply_retention(svc, parse_retention(TIERS), now=now)
    assert not result.errors
    assert result.thinned == {"3d:1m": 3, "5d:1h": 3} and result.snapshots == 3
    after = rows(svc)
    assert {sid for sid, _, _ in after} == expected
    for sid, paths in keys.items():
        for key in paths:
            assert svc.thumbs.exists(key) == (sid in expected), (sid, key)
    assert set(keys_by_snapshot(svc)) == expected
    with svc.sessions() as s:
        assert set(s.execute(select(EventSnapshot.snapshot_id)).scalars()) == expected

    again = apply_retention(svc, parse_retention(TIERS), now=now)
    assert again.thinned == {"3d:1m": 0, "5d:1h": 0} and again.snapshots == 0 and again.thumbnails == 0
    assert rows(svc) == after


def test_receiver_prune_applies_retention_and_says_what_it_would_do(settings, client, svc, fake_ice, fake_oss,
                                                                    frame):
    now = now_ms()
    for age in (0, 10 * DAY_MS):
        key = put_snapshot(fake_oss, fake_ice, now - age, frame)
        client.post("/callbacks/live-snapshot", data=callback_body(key, now - age))
    drain(svc)
    cli = Cli(settings.with_(retention="2d:all"))
    dry = cli.invoke("prune", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output and "1 snapshots" in dry.output and "nothing deleted" in dry.output
    assert len(rows(svc)) == 2
    done = cli.invoke("prune")
    assert done.exit_code == 0, done.output
    assert [ms for _, _, ms in rows(svc)] == [now]
    assert "deleted 0 snapshots" in cli.invoke("prune").output


def test_receiver_prune_without_retention_or_older_than_says_what_to_give(settings):
    result = Cli(settings).invoke("prune")
    assert result.exit_code == 2
    assert "--older-than" in result.output and "RECEIVER_RETENTION" in result.output


def test_retention_counts_the_same_on_a_second_look(client, svc: Services, fake_ice, fake_oss, frame):
    now = moment()
    index_history(client, svc, fake_ice, fake_oss, frame, now)
    with svc.sessions() as s:
        total = s.execute(select(func.count()).select_from(Snapshot)).scalar_one()
    first = apply_retention(svc, parse_retention(TIERS), dry_run=True, now=now)
    second = apply_retention(svc, parse_retention(TIERS), dry_run=True, now=now)
    assert first.thinned == second.thinned and first.snapshots == second.snapshots
    assert total == len(history(now))


def test_a_dry_run_reports_what_the_real_run_then_does(client, svc: Services, fake_ice, fake_oss, frame):
    """Every count: the thinned snapshots' files too, and (PostgreSQL) a day dropped whole listed by day only,
    not again per job. There, one of the two days past the cutoff has its partition (it goes whole) and the other
    has none (its rows wait in the default partition and go one by one, per job)."""
    now = moment()
    whole_day = (now - 5 * DAY_MS - 13 * H) // DAY_MS * DAY_MS
    with svc.engine.begin() as conn:
        pg = partitions.is_partitioned(conn)
        if pg:
            partitions.ensure_day(conn, whole_day)
    index_history(client, svc, fake_ice, fake_oss, frame, now)
    dry = apply_retention(svc, parse_retention(TIERS), dry_run=True, now=now)
    real = apply_retention(svc, parse_retention(TIERS), now=now)
    assert not dry.errors and not real.errors
    said = ("thinned", "snapshots", "thumbnails", "per_job", "days", "events")
    assert {k: getattr(dry, k) for k in said} == {k: getattr(real, k) for k in said}
    # What the history holds: 3 thinned in each tier and 3 past the cutoff, two thumbnail files each.
    assert real.thinned == {"3d:1m": 3, "5d:1h": 3} and real.snapshots == 3 and real.thumbnails == 18
    if pg:
        assert real.days == {partitions.day_name(whole_day): 1} and real.per_job == {"job-0002": 2}
    else:
        assert real.days == {} and real.per_job == {"job-0001": 1, "job-0002": 2}


def test_both_stores_delete_a_day_by_its_prefixes_and_nothing_else(settings, fake_oss, tmp_path):
    from receiver.adapters.thumbstore import FileThumbnailStore, thumbnail_store_from_url
    from receiver.media.keys import day_prefixes, thumbnail_key

    fake_oss.create_bucket("thumbs")
    oss_store = thumbnail_store_from_url(f"oss://thumbs/t/?endpoint={OSS_ENDPOINT}", settings)
    file_store = FileThumbnailStore(tmp_path / "day-thumbs")
    day = moment() // DAY_MS * DAY_MS
    doomed = [thumbnail_key(f"{i:02x}" + "0" * 30, day + i * 1000, 320, "jpg") for i in (0, 7, 255)]
    kept_keys = [thumbnail_key("ab" + "1" * 30, day + DAY_MS, 320, "jpg"),  # the next day
                 thumbnail_key("ab" + "2" * 30, day - 1, 160, "jpg"),  # the day before
                 "ab/" + "3" * 32 + "-320.jpg", "storyboards/ab/sheet.jpg"]  # older layout, sheets
    try:
        for store in (oss_store, file_store):
            for key in doomed + kept_keys:
                store.put(key, b"x", "image/jpeg")
            counted = sum(store.delete_prefix(p, dry_run=True) for p in day_prefixes(day))
            assert counted == 3 and all(store.exists(k) for k in doomed)
            assert sum(store.delete_prefix(p) for p in day_prefixes(day)) == 3
            assert [k for k in doomed + kept_keys if store.exists(k)] == kept_keys
        assert sorted(fake_oss.keys("thumbs")) == sorted(f"t/{k}" for k in kept_keys)
    finally:
        oss_store.close()


def test_the_maintenance_loop_applies_retention_when_set(client, svc: Services, fake_ice, fake_oss, frame):
    from receiver.ops.maintenance import Maintenance

    now = now_ms()
    for age in (0, 10 * DAY_MS):
        key = put_snapshot(fake_oss, fake_ice, now - age, frame)
        client.post("/callbacks/live-snapshot", data=callback_body(key, now - age))
    drain(svc)
    object.__setattr__(svc.settings, "retention", "2d:all")  # as RECEIVER_RETENTION=2d:all would set it
    object.__setattr__(svc.settings, "reconcile_seconds", 0.0)
    object.__setattr__(svc.settings, "message_retention_days", 0)  # the push outbox's own pruning: not this test
    assert Maintenance(svc).run_once() == ["prune"]
    assert [ms for _, _, ms in rows(svc)] == [now]
