"""Day partitions of snapshots, thumbnails and event_snapshots on PostgreSQL (migration 0007).

Each table is PARTITIONED BY RANGE (captured_at_ms) with one partition per UTC day, ``<table>_pYYYYMMDD``
holding [midnight, next midnight) in ms, and a DEFAULT partition ``<table>_default`` that takes a snapshot no
day partition covers (a clock far off, a backfill of old history), so an insert never fails for want of a
partition. The three tables always have the same days: a snapshot's thumbnails and links carry its
captured_at_ms, so a day is dropped from all three at once.

Everything here is a no-op on SQLite, which keeps plain tables.
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import Connection, text

from receiver.tiers import DAY_MS, day_of

# Children first: the order in which a day's partitions are dropped (nothing references snapshots any more,
# but the links and thumbnails of a day going before its snapshots keeps every moment consistent).
TABLES = ("event_snapshots", "thumbnails", "snapshots")
# Set as the comment of thumbnails partitions that hold rows copied by the migration: their files are under
# the older key layouts (no day in the key), so dropping that day lists the rows' keys instead of prefixes.
LEGACY_KEYS = "receiver: thumbnails under pre-0007 keys"
_NAME = re.compile(r"^(?:event_snapshots|thumbnails|snapshots)_p(\d{8})$")
AHEAD_DAYS = 7


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass('snapshots')")).scalar()
    return bool(kind == "p")


def day_name(day_ms: int) -> str:
    return dt.datetime.fromtimestamp(day_ms / 1000, dt.UTC).strftime("%Y%m%d")


def partition_name(table: str, day_ms: int) -> str:
    return f"{table}_p{day_name(day_ms)}"


def day_partitions(conn: Connection, table: str = "snapshots") -> list[int]:
    """The days (UTC midnight, ms) that have a partition of ``table``, ascending."""
    names = conn.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(:t)"), {"t": table}).scalars()
    days = []
    for name in names:
        m = _NAME.match(name)
        if m:
            days.append(int(dt.datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=dt.UTC).timestamp() * 1000))
    return sorted(days)


def create_default(conn: Connection) -> None:
    for table in TABLES:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table}_default PARTITION OF {table} DEFAULT"))


def ensure_day(conn: Connection, day_ms: int) -> bool:
    """Make ``day_ms``'s partitions of the three tables; True if any was made.

    Rows of that day already in the default partition (a snapshot that arrived before its day had one) are
    moved into the new partition first: PostgreSQL refuses to add a partition whose range the default
    partition holds rows of. Moved thumbnails under a pre-0007 key mark the partition as the upgrade marks the
    days it copies (LEGACY_KEYS).
    """
    assert day_ms % DAY_MS == 0
    made = False
    lo, hi = day_ms, day_ms + DAY_MS
    for table in TABLES:
        name = partition_name(table, day_ms)
        if conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
            continue
        stray = conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {table}_default "
                                  "WHERE captured_at_ms >= :lo AND captured_at_ms < :hi)"), {"lo": lo, "hi": hi})
        if stray.scalar():
            conn.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
            conn.execute(text(f"WITH moved AS (DELETE FROM {table}_default WHERE captured_at_ms >= :lo AND "
                              f"captured_at_ms < :hi RETURNING *) INSERT INTO {name} SELECT * FROM moved"),
                         {"lo": lo, "hi": hi})
            conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})"))
            if table == "thumbnails" and conn.execute(text(
                    f"SELECT EXISTS (SELECT 1 FROM {name} WHERE storage_key !~ :layout)"),
                    {"layout": f"^[0-9a-f]{{2}}/{day_name(day_ms)}/"}).scalar():
                # Rows the 0007 upgrade copied into the default partition (days it made no partition for):
                # their files are under an older key layout, which dropping the day must list rather than
                # find under the day's prefixes (see drop_day in ops/thinning.py).
                conn.execute(text(f"COMMENT ON TABLE {name} IS '{LEGACY_KEYS}'"))
        else:
            conn.execute(text(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ({lo}) TO ({hi})"))
        made = True
    return made


def ensure_ahead(conn: Connection, now_ms: int, ahead: int = AHEAD_DAYS, behind: int = 1) -> list[int]:
    """Partitions for the days from ``behind`` days ago to ``ahead`` days ahead; returns the days made."""
    today = day_of(now_ms)
    return [d for d in (today + i * DAY_MS for i in range(-behind, ahead + 1)) if ensure_day(conn, d)]


def has_legacy_keys(conn: Connection, day_ms: int) -> bool:
    comment = conn.execute(text("SELECT obj_description(to_regclass(:n), 'pg_class')"),
                           {"n": partition_name("thumbnails", day_ms)}).scalar()
    return comment == LEGACY_KEYS


def drop_day(conn: Connection, day_ms: int) -> None:
    """DETACH and DROP the day's partitions: a catalog change, whatever the number of rows."""
    for table in TABLES:
        name = partition_name(table, day_ms)
        if conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is None:
            continue
        conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
        conn.execute(text(f"DROP TABLE {name}"))
