"""Key matching against OverwriteFormat / SequenceFormat (receiver.media.formats)."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from receiver.exceptions import Rejected
from receiver.media.formats import (
    KeyMatch,
    check_key_safe,
    compile_format,
    format_prefix,
    match_key,
    overwrite_key,
    timestamp_from_digits,
    validate_format,
)

OVERWRITE = "snapshot/{JobId}.jpg"
SEQUENCE = "snapshot/{JobId}/{Sequence}/{UnixTimestamp}.jpg"

# Sequence formats where {JobId} is a whole path segment, so a key names exactly one job.
DELIMITED_FORMATS = [
    SEQUENCE,
    "snapshot/{JobId}/{UnixTimestamp}.jpg",
    "live/{JobId}/{Date}/{UnixTimestamp}.jpg",
    "live/{Date}/{JobId}/{Sequence}-{UnixTimestamp}.jpg",
    "{JobId}/{Date}/{Sequence}.jpg",
    "a/{JobId}/{JobId}_{Sequence}.jpg",
]
DATES = [
    "2022-08-16",
    "20220816",
    "2022/08/16",
    "2022-08-16T08:30:13Z",
    "2022-08-16 08:30:13",
    "2022-08-16T08:30:13+08:00",
    "2022_08_16_083013",
]


@pytest.fixture
def job_id() -> str:
    return "ab1c0046-263c-3560-978a-fb2877820def"


@pytest.fixture
def other_job_id() -> str:
    return "ab1c0046-263c-3560-978a-fb2877820dee"


def render(fmt: str, job: str, ts: str = "1660638613798", seq: str = "1", date: str = "2022-08-16") -> str:
    # One pass, so a job id that itself contains "{Date}" is not expanded again.
    values = {"JobId": job, "UnixTimestamp": ts, "Sequence": seq, "Date": date}
    return re.sub(r"\{(JobId|UnixTimestamp|Sequence|Date)\}", lambda m: values[m.group(1)], fmt)


# --- examples ----------------------------------------------------------------------------------------


def test_console_default_overwrite(job_id: str) -> None:
    key = f"snapshot/{job_id}.jpg"
    assert overwrite_key(OVERWRITE, job_id) == key
    assert match_key(key, job_id, OVERWRITE, SEQUENCE) == KeyMatch("overwrite", None, None)


def test_console_default_sequence(job_id: str) -> None:
    m = match_key(f"snapshot/{job_id}/7/1660638613798.jpg", job_id, OVERWRITE, SEQUENCE)
    assert m == KeyMatch("sequence", 1660638613798, 7)


def test_ten_digit_timestamp_is_seconds(job_id: str) -> None:
    m = match_key(f"snapshot/{job_id}/7/1660638613.jpg", job_id, None, SEQUENCE)
    assert m.timestamp_ms == 1660638613000


@pytest.mark.parametrize("digits", ["166063861", "16606386137", "166063861379", "16606386137980"])
def test_other_timestamp_widths_rejected(job_id: str, digits: str) -> None:
    with pytest.raises(Rejected):
        match_key(f"snapshot/{job_id}/7/{digits}.jpg", job_id, None, SEQUENCE)


def test_non_ascii_digits_rejected(job_id: str) -> None:
    arabic = "".join(chr(0x660 + int(d)) for d in "1660638613")
    with pytest.raises(Rejected):
        match_key(f"snapshot/{job_id}/7/{arabic}.jpg", job_id, None, SEQUENCE)


@pytest.mark.parametrize("date", DATES)
def test_date_renderings(job_id: str, date: str) -> None:
    fmt = "live/{JobId}/{Date}/{UnixTimestamp}.jpg"
    m = match_key(render(fmt, job_id, date=date), job_id, None, fmt)
    assert m == KeyMatch("sequence", 1660638613798, None)


@pytest.mark.parametrize("date", ["..", ".", ".hidden", "a/../b", "a//b", "1/2/3/4", "a\\b", ""])
def test_date_pattern_never_yields_dot_segments(job_id: str, date: str) -> None:
    fmt = "live/{JobId}/{Date}/{Sequence}.jpg"
    # The regex alone must refuse these, even without check_key_safe in front of it.
    assert compile_format(fmt, job_id).match(f"live/{job_id}/{date}/1.jpg") is None


def test_repeated_date_must_repeat(job_id: str) -> None:
    fmt = "{JobId}/{Date}/{Date}-{Sequence}.jpg"
    assert match_key(f"{job_id}/20220816/20220816-3.jpg", job_id, None, fmt).sequence == 3
    with pytest.raises(Rejected):
        match_key(f"{job_id}/20220816/20220817-3.jpg", job_id, None, fmt)


def test_repeated_timestamp_uses_first(job_id: str) -> None:
    fmt = "{JobId}/{UnixTimestamp}/{UnixTimestamp}.jpg"
    m = match_key(f"{job_id}/1660638613798/1660638614.jpg", job_id, None, fmt)
    assert m.timestamp_ms == 1660638613798


def test_regex_metacharacters_in_job_id_are_literal() -> None:
    job = "a.b+c(1)"
    assert match_key(f"snapshot/{job}/1/1660638613798.jpg", job, None, SEQUENCE).kind == "sequence"
    for lookalike in ("aXb+c(1)", "a.bbc(1)", "a.b+c1", "a.b+c(1))"):
        with pytest.raises(Rejected):
            match_key(f"snapshot/{lookalike}/1/1660638613798.jpg", job, None, SEQUENCE)


def test_another_jobs_keys_rejected(job_id: str, other_job_id: str) -> None:
    for key in (f"snapshot/{other_job_id}.jpg", f"snapshot/{other_job_id}/1/1660638613798.jpg"):
        with pytest.raises(Rejected, match="does not match"):
            match_key(key, job_id, OVERWRITE, SEQUENCE)


def test_sequence_format_without_job_id_accepts_any_job(job_id: str, other_job_id: str) -> None:
    fmt = "snapshot/{UnixTimestamp}.jpg"
    assert match_key("snapshot/1660638613.jpg", other_job_id, None, fmt).kind == "sequence"
    assert match_key("snapshot/1660638613.jpg", job_id, None, fmt).timestamp_ms == 1660638613000


def test_unknown_placeholder_is_literal(job_id: str) -> None:
    fmt = "snap/{JobId}/{Foo}/{Sequence}.jpg"
    assert match_key(f"snap/{job_id}/{{Foo}}/3.jpg", job_id, None, fmt).sequence == 3
    with pytest.raises(Rejected):
        match_key(f"snap/{job_id}/x/3.jpg", job_id, None, fmt)


def test_overwrite_wins_when_both_match(job_id: str) -> None:
    key = f"snapshot/{job_id}.jpg"
    assert match_key(key, job_id, OVERWRITE, "snapshot/{Date}.jpg").kind == "overwrite"


@pytest.mark.parametrize(("ow", "seq"), [(None, None), ("", ""), (None, "")])
def test_no_format_rejects(job_id: str, ow: str | None, seq: str | None) -> None:
    with pytest.raises(Rejected):
        match_key(f"snapshot/{job_id}.jpg", job_id, ow, seq)


def test_empty_job_id_rejected() -> None:
    with pytest.raises(Rejected, match="job id"):
        match_key("snapshot/1660638613.jpg", "", None, "snapshot/{JobId}{UnixTimestamp}.jpg")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs/a.jpg",
        "\\abs\\a.jpg",
        "a//b.jpg",
        "a/b/",
        "..",
        "a/../b.jpg",
        "a\\..\\b.jpg",
        "a/..\\b.jpg",
        "a/./b.jpg",
        "./a.jpg",
        "a/b\x00.jpg",
        "a/b\n.jpg",
        "a/b\x7f.jpg",
        "a/b\x85.jpg",
        "a/\u202egpj.exe",
        "a/\u2028b.jpg",
        "a/\ud800.jpg",
        "a" * 1024,
        "\u00e9" * 512,
    ],
)
def test_unsafe_keys_rejected(key: str) -> None:
    with pytest.raises(Rejected):
        check_key_safe(key)
    with pytest.raises(Rejected):
        match_key(key, "a", "{JobId}.jpg", "{Date}.jpg")


@pytest.mark.parametrize("key", ["a" * 1023, "\u00e9" * 511, "a/%2e%2e/b.jpg", "a/...jpg", "a/.b/c.jpg"])
def test_safe_edge_keys_pass(key: str) -> None:
    # Percent-encoding is deliberately not decoded: OSS stores "%2e%2e" as a literal name.
    check_key_safe(key)


@pytest.mark.parametrize("fmt", ["../{JobId}.jpg", "/{JobId}.jpg", "a//{JobId}.jpg"])
def test_overwrite_key_rejects_unsafe_format(fmt: str, job_id: str) -> None:
    with pytest.raises(Rejected):
        overwrite_key(fmt, job_id)


def test_overwrite_key_rejects_unsafe_job_id() -> None:
    with pytest.raises(Rejected):
        overwrite_key("snapshot/{JobId}/x.jpg", "..")


@pytest.mark.parametrize(
    ("fmt", "prefix"),
    [
        (SEQUENCE, "snapshot/J/"),
        (OVERWRITE, "snapshot/J.jpg"),
        ("{Date}/{JobId}/{Sequence}.jpg", ""),
        ("a/{Foo}/{JobId}-{UnixTimestamp}.jpg", "a/{Foo}/J-"),
    ],
)
def test_format_prefix(fmt: str, prefix: str) -> None:
    assert format_prefix(fmt, "J") == prefix


def test_compile_format_is_cached(job_id: str) -> None:
    assert compile_format(SEQUENCE, job_id) is compile_format(SEQUENCE, job_id)


def test_timestamp_from_digits() -> None:
    assert timestamp_from_digits("1660638613798") == 1660638613798
    assert timestamp_from_digits("1660638613") == 1660638613000
    for bad in ("", "166063861379", "16606386137980", "166063861x", "\u0661" * 10):
        with pytest.raises(ValueError):
            timestamp_from_digits(bad)


def test_validate_format_defaults_clean() -> None:
    assert validate_format(OVERWRITE, "overwrite") == []
    assert validate_format(SEQUENCE) == []


@pytest.mark.parametrize(
    ("fmt", "kind", "needle"),
    [
        ("/snapshot/{JobId}.jpg", "overwrite", "starts with '/'"),
        ("snapshot/{JobId}.png", "overwrite", ".jpg"),
        ("snapshot/{JobId}/{Date}.jpg", "sequence", "{UnixTimestamp} or {Sequence}"),
        ("snapshot/{JobId}/{Date}.jpg", "overwrite", "only {JobId}"),
        ("snapshot/{UnixTimestamp}.jpg", "sequence", "no {JobId}"),
        ("s/{JobId}/{Foo}/{Sequence}.jpg", "sequence", "{Foo}"),
        ("s/{JobId}{Sequence}.jpg", "sequence", "adjacent"),
        ("s/{JobId}/" + "x" * 260 + "{Sequence}.jpg", "sequence", "longer than 255"),
    ],
)
def test_validate_format_warnings(fmt: str, kind: str, needle: str) -> None:
    assert kind in ("overwrite", "sequence")
    warnings = validate_format(fmt, "overwrite" if kind == "overwrite" else "sequence")
    assert any(needle in w for w in warnings), warnings


# --- properties --------------------------------------------------------------------------------------

# ICE job ids are UUID-like; add regex metacharacters and braces to prove they are escaped.
job_ids = st.text(alphabet=string.ascii_letters + string.digits + "-_.+*?^$|()[]{}", min_size=1, max_size=40)
safe_job_ids = job_ids.filter(lambda j: j not in (".", ".."))
ms_timestamps = st.integers(10**12, 10**13 - 1)
s_timestamps = st.integers(10**9, 10**10 - 1)


@given(
    fmt=st.sampled_from(DELIMITED_FORMATS),
    job=safe_job_ids,
    ts=st.one_of(ms_timestamps.map(lambda t: (str(t), t)), s_timestamps.map(lambda t: (str(t), t * 1000))),
    seq=st.integers(0, 10**9),
    pad=st.integers(0, 8),
    date=st.sampled_from(DATES),
)
def test_render_then_match_sequence(
    fmt: str, job: str, ts: tuple[str, int], seq: int, pad: int, date: str
) -> None:
    key = render(fmt, job, ts=ts[0], seq=str(seq).zfill(pad), date=date)
    m = match_key(key, job, OVERWRITE, fmt)
    assert m.kind == "sequence"
    assert m.timestamp_ms == (ts[1] if "{UnixTimestamp}" in fmt else None)
    assert m.sequence == (seq if "{Sequence}" in fmt else None)


@given(job=safe_job_ids)
def test_render_then_match_overwrite(job: str) -> None:
    key = overwrite_key(OVERWRITE, job)
    assert match_key(key, job, OVERWRITE, SEQUENCE) == KeyMatch("overwrite", None, None)


@given(
    fmt=st.sampled_from(DELIMITED_FORMATS),
    job=safe_job_ids,
    date=st.sampled_from(DATES),
    where=st.integers(0, 10),
    sep=st.sampled_from(["/", "\\"]),
)
def test_dotdot_segment_always_rejected(fmt: str, job: str, date: str, where: int, sep: str) -> None:
    segments = render(fmt, job, date=date).split("/")
    i = where % (len(segments) + 1)
    left, right = "/".join(segments[:i]), "/".join(segments[i:])
    key = sep.join(part for part in (left, "..", right) if part)
    assert ".." in re.split(r"[/\\]", key)
    with pytest.raises(Rejected):
        check_key_safe(key)
    with pytest.raises(Rejected):
        match_key(key, job, fmt, fmt)


@given(fmt=st.sampled_from(DELIMITED_FORMATS + [OVERWRITE]), a=safe_job_ids, b=safe_job_ids)
def test_key_for_one_job_never_matches_another(fmt: str, a: str, b: str) -> None:
    assume(a != b)
    key = render(fmt, a)
    with pytest.raises(Rejected):
        match_key(key, b, fmt, fmt)


# Formats built from real placeholders as well as arbitrary text, so the regex path is exercised.
format_parts = st.sampled_from(["{JobId}", "{UnixTimestamp}", "{Sequence}", "{Date}", "{Foo}", "/", ".jpg"])
formats = st.none() | st.lists(format_parts | st.text(max_size=5), max_size=6).map("".join)


@given(key=st.text(), job=st.text(), ow=formats, seq=formats)
def test_match_key_raises_only_rejected(key: str, job: str, ow: str | None, seq: str | None) -> None:
    try:
        m = match_key(key, job, ow, seq)
    except Rejected:
        return
    assert m.kind in ("overwrite", "sequence")
    check_key_safe(key)


@given(digits=st.from_regex(r"[0-9]{10}|[0-9]{13}", fullmatch=True))
def test_timestamp_from_digits_property(digits: str) -> None:
    ms = timestamp_from_digits(digits)
    assert ms == int(digits) * (1000 if len(digits) == 10 else 1)
