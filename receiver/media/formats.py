"""Match OSS object keys against a job's OverwriteFormat / SequenceFormat (design/ice.md §4).

ICE never tells us the resolved key of a sequence snapshot, and a callback body is untrusted, so a key is
accepted only if it is safe to fetch and could have been produced by the job's own format.

Keys are compared raw: percent-encoding is *not* decoded, because OSS stores the key bytes verbatim and
``%2e%2e`` is a literal file name there, not a traversal. Callers that later build URLs or file paths from a
key must encode it themselves.

``{Date}`` rendering is undocumented; we accept 1-3 ``/``-separated segments of ``[0-9A-Za-z_:.+ -]``
(covers ``2022-08-16``, ``20220816``, ``2022/08/16``, ``2022-08-16T08:30:13Z``, ``+08:00`` offsets). A segment
may not start with ``.`` so the placeholder can never produce ``.`` or ``..`` on its own. Keys that
ListLiveSnapshotFiles returns are authoritative: callers should log a mismatch there rather than reject.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from receiver.exceptions import Rejected

# OSS's own limit on key length.
MAX_KEY_BYTES = 1023
# CreateLiveSnapshotTemplate's documented limit; only used for warnings.
MAX_FORMAT_CHARS = 255

JOB_ID = "{JobId}"
TIMESTAMP = "{UnixTimestamp}"
SEQUENCE = "{Sequence}"
DATE = "{Date}"
_VARIABLE = frozenset({TIMESTAMP, SEQUENCE, DATE})
_TOKEN = re.compile(r"(\{[A-Za-z]+\})")

_DATE_SEGMENT = r"[0-9A-Za-z_:+-][0-9A-Za-z_:.+ -]*"
_DATE = rf"{_DATE_SEGMENT}(?:/{_DATE_SEGMENT}){{0,2}}"
_TIMESTAMP = r"[0-9]{10}(?:[0-9]{3})?"
# Cc: C0/C1 controls incl. NUL; Cf: invisible/bidi overrides that make keys spoof in logs; Cs: lone
# surrogates; Zl/Zp: line breaks that would split log lines.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@dataclass(frozen=True)
class KeyMatch:
    kind: Literal["overwrite", "sequence"]
    # Milliseconds since the epoch, from the first {UnixTimestamp}; None if the format has none.
    timestamp_ms: int | None
    sequence: int | None


def _show(key: str) -> str:
    return repr(key[:120]) + ("..." if len(key) > 120 else "")


def check_key_safe(key: str) -> None:
    """Raise Rejected unless ``key`` is a plain relative OSS key that cannot escape a prefix or local folder.

    Backslash counts as a separator too, because the local folder store may run on Windows and
    downstream tools often normalise it to ``/``.
    """
    if not key:
        raise Rejected("object key is empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise Rejected(f"object key {_show(key)} is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise Rejected(f"object key is {size} bytes; OSS allows at most {MAX_KEY_BYTES}")
    if key[0] in "/\\":
        raise Rejected(f"object key {_show(key)} is absolute")
    if any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in key):
        raise Rejected(f"object key {_show(key)} contains control or invisible characters")
    for segment in re.split(r"[/\\]", key):
        # Empty segments ("a//b", trailing "/") are distinct keys in OSS but collapse on a filesystem.
        if segment in ("", ".", ".."):
            raise Rejected(f"object key {_show(key)} has an empty, '.' or '..' path segment")


def overwrite_key(fmt: str, job_id: str) -> str:
    """The exact key of the overwrite snapshot; only {JobId} is a placeholder in OverwriteFormat."""
    key = fmt.replace(JOB_ID, job_id)
    check_key_safe(key)
    return key


@functools.lru_cache(maxsize=1024)
def compile_format(fmt: str, job_id: str) -> re.Pattern[str]:
    """An anchored regex for keys ``fmt`` can produce for ``job_id``.

    Groups ``ts`` and ``seq`` capture the first {UnixTimestamp} / {Sequence}. Repeats of those are
    matched independently (no backreference), as nothing says ICE renders them identically. A repeated
    {Date} must repeat the first one: it bounds backtracking on hostile keys, since {Date} overlaps
    most other text. Unknown placeholders such as ``{Foo}`` are literal text.
    """
    seen: set[str] = set()
    out: list[str] = []
    for part in _TOKEN.split(fmt):
        first = part not in seen
        seen.add(part)
        if part == JOB_ID:
            out.append(re.escape(job_id))
        elif part == TIMESTAMP:
            out.append(f"(?P<ts>{_TIMESTAMP})" if first else f"(?:{_TIMESTAMP})")
        elif part == SEQUENCE:
            out.append("(?P<seq>[0-9]+)" if first else "[0-9]+")
        elif part == DATE:
            out.append(f"(?P<date>{_DATE})" if first else "(?P=date)")
        else:
            out.append(re.escape(part))
    # re.ASCII keeps any stray \d from matching non-ASCII digits that int() would then accept.
    return re.compile(r"\A" + "".join(out) + r"\Z", re.ASCII)


def timestamp_from_digits(s: str) -> int:
    """Milliseconds from a {UnixTimestamp} rendering: 13 digits are ms, 10 digits are seconds."""
    if not (s.isascii() and s.isdigit()) or len(s) not in (10, 13):
        raise ValueError(f"not a 10 or 13 digit Unix timestamp: {s!r}")
    return int(s) if len(s) == 13 else int(s) * 1000


def match_key(key: str, job_id: str, overwrite_format: str | None, sequence_format: str | None) -> KeyMatch:
    """Classify ``key`` for ``job_id`` or raise Rejected.

    Binding to the job relies on {JobId} in the format: a SequenceFormat without it accepts any key
    matching the rest, and {JobId} directly adjacent to {Sequence}/{Date} cannot always tell job ``x``
    from job ``x1``. Empty formats count as unset, as ICE returns "" for an unset field.
    """
    check_key_safe(key)
    if not job_id:
        raise Rejected("job id is empty")
    if overwrite_format and key == overwrite_format.replace(JOB_ID, job_id):
        return KeyMatch("overwrite", None, None)
    if sequence_format:
        m = compile_format(sequence_format, job_id).match(key)
        if m:
            groups = m.groupdict()
            ts, seq = groups.get("ts"), groups.get("seq")
            return KeyMatch(
                "sequence",
                timestamp_from_digits(ts) if ts is not None else None,
                int(seq) if seq is not None else None,
            )
    raise Rejected(
        f"object key {_show(key)} does not match the job's OverwriteFormat/SequenceFormat (job {job_id!r})"
    )


def format_prefix(fmt: str, job_id: str) -> str:
    """The literal start of every key ``fmt`` renders for ``job_id``: a safe OSS listing prefix."""
    out: list[str] = []
    for part in _TOKEN.split(fmt):
        if part in _VARIABLE:
            break
        out.append(job_id if part == JOB_ID else part)
    return "".join(out)


def validate_format(fmt: str, kind: Literal["overwrite", "sequence"] = "sequence") -> list[str]:
    """Warnings about ``fmt`` against the CreateLiveSnapshotTemplate rules; informational only.

    ICE already validated the job's formats, so a warning means our reading of the rules may be off.
    """
    warnings: list[str] = []
    parts = [p for p in _TOKEN.split(fmt) if p]
    placeholders = [p for p in parts if _TOKEN.fullmatch(p)]
    if fmt.startswith("/"):
        warnings.append("format starts with '/'")
    if not fmt.endswith(".jpg"):
        warnings.append("format does not end with '.jpg'")
    if len(fmt) > MAX_FORMAT_CHARS:
        warnings.append(f"format is longer than {MAX_FORMAT_CHARS} characters")
    if JOB_ID not in placeholders:
        warnings.append("format has no {JobId}: keys cannot be tied to one job")
    unknown = sorted({p for p in placeholders if p != JOB_ID and p not in _VARIABLE})
    if unknown:
        warnings.append(f"unknown placeholders treated as literal text: {', '.join(unknown)}")
    if kind == "overwrite":
        extra = sorted({p for p in placeholders if p in _VARIABLE})
        if extra:
            warnings.append(f"OverwriteFormat allows only {{JobId}}; found {', '.join(extra)}")
    elif TIMESTAMP not in placeholders and SEQUENCE not in placeholders:
        warnings.append("SequenceFormat needs {UnixTimestamp} or {Sequence}")
    variable = {JOB_ID} | _VARIABLE
    if any(a in variable and b in variable for a, b in itertools.pairwise(parts)):
        warnings.append("adjacent placeholders make keys ambiguous to parse")
    return warnings
