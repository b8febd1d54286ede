"""RECEIVER_RETENTION: the strict parser (what each bad value gets) and the tier arithmetic (windows, cutoff,
which rows stay)."""

from __future__ import annotations

import pytest

from receiver.config import ConfigError, Settings
from receiver.media.keys import day_prefixes, thumbnail_key
from receiver.tiers import DAY_MS, RetentionError, Tier, kept, parse_retention, plan
from receiver.timeutil import ms_to_iso

M, H = 60_000, 3_600_000
NOON = 1_796_212_800_000  # 2026-12-02T12:00:00Z
assert NOON % DAY_MS == 12 * H


def test_the_contract_example_parses():
    tiers = parse_retention("7d:all,90d:1m,1y:1h")
    assert tiers == (Tier(7 * DAY_MS, None, "7d:all"), Tier(90 * DAY_MS, M, "90d:1m"), Tier(365 * DAY_MS, H, "1y:1h"))


@pytest.mark.parametrize(("text", "ages", "resolutions"), [
    ("", (), ()),
    ("  ", (), ()),
    ("30d:all", (30 * DAY_MS,), (None,)),
    ("2w:5m", (14 * DAY_MS,), (5 * M,)),
    (" 48H:ALL , 30d:30s ", (2 * DAY_MS, 30 * DAY_MS), (None, 30_000)),
    ("1d:1m,7d:1h,30d:6h,1y:1d", (DAY_MS, 7 * DAY_MS, 30 * DAY_MS, 365 * DAY_MS), (M, H, 6 * H, DAY_MS)),
    ("90m:all,12h:1m", (90 * M, 12 * H), (None, M)),
])
def test_valid_values(text, ages, resolutions):
    tiers = parse_retention(text)
    assert tuple(t.age_ms for t in tiers) == ages
    assert tuple(t.resolution_ms for t in tiers) == resolutions


@pytest.mark.parametrize(("text", "says"), [
    ("7d", "expected AGE:KEEP"),
    ("7d:all,", "empty tier"),
    (",7d:all", "empty tier"),
    ("7:all", "the age must be a whole number"),
    ("1.5d:all", "the age must be a whole number"),
    ("7x:all", "the age must be a whole number"),
    ("0d:all", "the age must be positive"),
    ("-1d:all", "the age must be a whole number"),
    ("7d:some", "what to keep"),
    ("7d:1w", "what to keep"),
    ("7d:1y", "what to keep"),
    ("7d:0m", "must be positive"),
    ("7d:2d", "must be at most 1d"),
    ("7d:7m", "must divide one day"),
    ("7d:all,90d:all", "`all` only in the first tier"),
    ("7d:1m,90d:all", "`all` only in the first tier"),
    ("90d:1m,7d:1h", "ages must ascend"),
    ("7d:1m,7d:1h", "ages must ascend"),
    ("7d:all,90d:1h,1y:1m", "multiple of the previous"),
    ("7d:all,90d:2h,1y:3h", "multiple of the previous"),
    # An age so old that "now minus it" is no date Python can print (every prune would fail), and one too long
    # for int() to read at all: both refused when the settings are read, not at the first prune.
    ("7d:all,1001y:1d", "the age must be at most 1000y"),
    ("3000y:all", "the age must be at most 1000y"),
    ("1" * 5000 + "d:all", "the age must be at most 1000y"),
    ("000000000000000000000000000007d:all,8d:1h", None),
    # Digits of other scripts: int() would read "\u0667" as 7.
    ("\u0667d:all", "the age must be a whole number"),
])
def test_bad_values_are_refused_with_the_reason(text, says):
    if says is None:  # leading zeros are no reason to refuse a value
        assert parse_retention(text)[0].age_ms == 7 * DAY_MS
        return
    with pytest.raises(RetentionError, match=says):
        parse_retention(text)


def test_the_oldest_age_allowed_plans_a_printable_cutoff():
    p = plan(parse_retention("7d:all,1000y:1d"), NOON)
    assert p.cutoff_ms < 0 and ms_to_iso(p.cutoff_ms).startswith("10")


def test_settings_refuse_a_bad_value_naming_the_variable():
    with pytest.raises(ConfigError, match="RECEIVER_RETENTION tier '90d:1x'"):
        Settings.from_env({"RECEIVER_RETENTION": "7d:all,90d:1x"})
    assert Settings.from_env({"RECEIVER_RETENTION": "7d:all,90d:1m"}).retention == "7d:all,90d:1m"


def test_windows_meet_on_bucket_boundaries_and_the_cutoff_is_a_midnight():
    now = NOON + 17 * M + 23_456  # 12:17:23.456
    p = plan(parse_retention("7d:all,90d:1m,1y:1h"), now)
    minute, hour = p.windows
    assert minute.resolution_ms == M and hour.resolution_ms == H
    assert minute.hi_ms == now - 7 * DAY_MS - (now % M)  # rounded down to the minute
    assert minute.lo_ms == hour.hi_ms == now - 90 * DAY_MS - (now % H)  # rounded down to the hour
    assert hour.lo_ms == p.cutoff_ms == (now - 365 * DAY_MS) // DAY_MS * DAY_MS
    for w in p.windows:
        assert w.lo_ms % w.resolution_ms == 0 and w.hi_ms % w.resolution_ms == 0


def test_a_first_tier_that_thins_starts_at_the_current_bucket():
    now = NOON + 90 * M + 5
    (w,) = plan(parse_retention("2d:1h"), now).windows
    assert (w.lo_ms, w.hi_ms) == (NOON - 2 * DAY_MS - 12 * H, NOON + H)  # the running hour is left alone


def test_kept_is_the_first_per_job_per_clock_bucket_and_nothing_past_the_cutoff():
    p = plan(parse_retention("1d:all,3d:1m,5d:1h"), NOON)
    a = NOON - 2 * DAY_MS  # in the 1-minute tier, on a minute boundary
    b = NOON - 4 * DAY_MS  # in the 1-hour tier, on an hour boundary
    rows = [
        (1, "j1", NOON - 2 * H), (2, "j1", NOON - 2 * H + 1), (3, "j1", NOON - 2 * H + 2),  # all kept
        (4, "j1", a + 10_000), (5, "j1", a + 5_000), (6, "j1", a + 50_000), (7, "j1", a + 65_000),
        (8, "j2", a + 30_000), (9, "j2", a + 20_000),
        (10, "j1", b + M), (11, "j1", b + 10 * M), (12, "j1", b + 59 * M), (13, "j1", b + 61 * M),
        (14, "j1", b + M),  # same instant as 10: the lower id is first
        (15, "j1", NOON - 5 * DAY_MS - 6 * H),  # after the cutoff (midnight 5.5 days back): first of its hour
        (16, "j1", NOON - 5 * DAY_MS - 13 * H), (17, "j2", NOON - 7 * DAY_MS),  # before the cutoff
    ]
    assert kept(rows, p) == {1, 2, 3, 5, 7, 9, 10, 13, 15}
    # Thinning what a prune kept keeps all of it: a second prune changes nothing.
    again = [r for r in rows if r[0] in kept(rows, p)]
    assert kept(again, p) == {r[0] for r in again}
    # Later, rows move to coarser tiers, and the first of an hour is the first of its minute too.
    later = plan(parse_retention("1d:all,3d:1m,5d:1h"), NOON + 2 * DAY_MS)
    assert kept(again, later) == kept(rows, later)


def test_thumbnail_keys_put_the_hash_first_and_the_day_second():
    key = thumbnail_key("ab" + "0" * 30, NOON + 5, 320, "jpg")
    assert key == "ab/20261202/ab000000000000000000000000000000-320.jpg"
    prefixes = day_prefixes(NOON - 12 * H)
    assert len(prefixes) == 256 and prefixes[0] == "00/20261202/" and prefixes[-1] == "ff/20261202/"
    assert any(key.startswith(p) for p in prefixes)
