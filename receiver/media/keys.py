"""Where a thumbnail is stored: ``<hh>/<YYYYMMDD>/<ident>-<width>.<ext>``.

``hh`` is the first two hex digits of the snapshot's identity hash: 256 prefixes that spread writes (OSS
partitions a bucket's index by key prefix, and keys starting with a date would all land on one partition,
which caps the request rate). ``YYYYMMDD`` is the UTC day of capture: every thumbnail of a day is under the
256 prefixes ``<hh>/<YYYYMMDD>/``, which retention lists or removes when it drops the day, without listing the
rest of the store. Storyboard sheets live under ``storyboards/``, apart from both.
"""

from __future__ import annotations

import datetime as dt

DAY_MS = 86_400_000


def day_text(at_ms: int) -> str:
    return dt.datetime.fromtimestamp(at_ms // DAY_MS * DAY_MS / 1000, dt.UTC).strftime("%Y%m%d")


def thumbnail_key(ident: str, captured_at_ms: int, width: int, ext: str) -> str:
    return f"{ident[:2]}/{day_text(captured_at_ms)}/{ident}-{width}.{ext}"


def day_prefixes(day_ms: int) -> list[str]:
    """The 256 prefixes holding the thumbnails of the UTC day starting at ``day_ms``."""
    day = day_text(day_ms)
    return [f"{i:02x}/{day}/" for i in range(256)]
