"""snapshots, thumbnails, event_snapshots by day of capture (PostgreSQL partitions); identity gains the day

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

On PostgreSQL the three tables become PARTITIONED BY RANGE (captured_at_ms), a partition per UTC day plus a
DEFAULT one (receiver/db/partitions.py). An existing database is converted in place, in this migration's
one transaction: the old tables are renamed, the partitioned ones created (snapshots keeps its id sequence),
the rows copied over in batches of id ranges, the old tables dropped. Day partitions are made for every day
that holds rows (within ten years back and a month ahead; rows outside go to the default partition) and for
yesterday .. seven days ahead. Old thumbnail keys stay valid (rows carry their key); the partitions that
received copied rows are marked, so dropping those days deletes their files by key rather than by prefix.

On SQLite the tables stay plain; thumbnails and event_snapshots gain captured_at_ms too, so both backends
run the same statements.

Keys: a partitioned table's primary key and unique constraints must contain the partition key, so
snapshots' key is (id, captured_at_ms) and the identity constraint gains captured_at_ms; thumbnails and
event_snapshots carry the snapshot's captured_at_ms in theirs. Their foreign keys to snapshots are gone (a
day is dropped from all three tables at once; rows are deleted together by ops/retention.py).
"""

import time

import sqlalchemy as sa
from alembic import op

from receiver.db import partitions

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BATCH = 50_000  # ids per copy statement
_SNAPSHOT_COLUMNS = ("id, job_id, captured_at_ms, kind, oss_endpoint, oss_bucket, oss_object, etag, size, width, "
                     "height, sha256, create_timestamp_ms, last_modified_ms, indexed_at, luma, luma_spread, dhash, "
                     "placeholder")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_plain()


def _upgrade_plain() -> None:
    # Children first: rebuilding snapshots drops the old table, which with foreign keys on would cascade.
    op.create_table(
        'thumbnails_new',
        sa.Column('snapshot_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('captured_at_ms', sa.BigInteger(), nullable=False),
        sa.Column('width', sa.Integer(), nullable=False),
        sa.Column('height', sa.Integer(), nullable=False),
        sa.Column('format', sa.String(length=8), nullable=False),
        sa.Column('storage_key', sa.Text(), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('etag', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('snapshot_id', 'captured_at_ms', 'width'),
    )
    op.execute("INSERT INTO thumbnails_new (snapshot_id, captured_at_ms, width, height, format, storage_key, size, "
               "etag) SELECT t.snapshot_id, s.captured_at_ms, t.width, t.height, t.format, t.storage_key, t.size, "
               "t.etag FROM thumbnails t JOIN snapshots s ON s.id = t.snapshot_id")
    op.drop_table('thumbnails')
    op.rename_table('thumbnails_new', 'thumbnails')
    op.create_table(
        'event_snapshots_new',
        sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('snapshot_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('captured_at_ms', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['event_id'], ['events.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('event_id', 'snapshot_id', 'captured_at_ms'),
    )
    op.execute("INSERT INTO event_snapshots_new (event_id, snapshot_id, captured_at_ms) "
               "SELECT l.event_id, l.snapshot_id, s.captured_at_ms FROM event_snapshots l "
               "JOIN snapshots s ON s.id = l.snapshot_id")
    op.drop_table('event_snapshots')
    op.rename_table('event_snapshots_new', 'event_snapshots')
    op.create_index('ix_event_snapshots_snapshot', 'event_snapshots', ['snapshot_id', 'captured_at_ms'])
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.drop_constraint('uq_snapshots_identity', type_='unique')
        batch_op.create_unique_constraint('uq_snapshots_identity',
                                          ['job_id', 'oss_bucket', 'oss_object', 'etag', 'captured_at_ms'])


def _batches(sql: str, lo: int | None, hi: int | None) -> None:
    if lo is None or hi is None:
        return
    for start in range(lo, hi + 1, BATCH):
        op.execute(sa.text(sql).bindparams(lo=start, hi=start + BATCH))


def _upgrade_postgresql() -> None:
    conn = op.get_bind()
    seq = conn.execute(sa.text("SELECT pg_get_serial_sequence('snapshots', 'id')")).scalar()
    # The old tables step aside under other names (index and constraint names are per schema in PostgreSQL).
    op.execute("ALTER TABLE snapshots DROP CONSTRAINT uq_snapshots_identity")
    op.execute("DROP INDEX ix_snapshots_job_time")
    for table in partitions.TABLES:
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_0004")
        op.execute(f"ALTER INDEX {table}_pkey RENAME TO {table}_0004_pkey")

    op.execute(f"CREATE TABLE snapshots (LIKE snapshots_0004 INCLUDING DEFAULTS) PARTITION BY RANGE (captured_at_ms)")
    op.execute("ALTER TABLE snapshots ADD CONSTRAINT snapshots_pkey PRIMARY KEY (id, captured_at_ms), "
               "ADD CONSTRAINT uq_snapshots_identity UNIQUE (job_id, oss_bucket, oss_object, etag, captured_at_ms)")
    op.execute("CREATE INDEX ix_snapshots_job_time ON snapshots (job_id, captured_at_ms, id)")
    if seq:
        # The same sequence goes on numbering: ids already handed out are never reused.
        op.execute(f"ALTER SEQUENCE {seq} OWNED BY snapshots.id")
    op.execute("CREATE TABLE thumbnails (snapshot_id BIGINT NOT NULL, captured_at_ms BIGINT NOT NULL, "
               "width INTEGER NOT NULL, height INTEGER NOT NULL, format VARCHAR(8) NOT NULL, storage_key TEXT NOT NULL, "
               "size INTEGER NOT NULL, etag VARCHAR(64) NOT NULL, "
               "CONSTRAINT thumbnails_pkey PRIMARY KEY (snapshot_id, captured_at_ms, width)) "
               "PARTITION BY RANGE (captured_at_ms)")
    op.execute("CREATE TABLE event_snapshots (event_id BIGINT NOT NULL, snapshot_id BIGINT NOT NULL, "
               "captured_at_ms BIGINT NOT NULL, "
               "CONSTRAINT event_snapshots_pkey PRIMARY KEY (event_id, snapshot_id, captured_at_ms), "
               "CONSTRAINT event_snapshots_event_id_fkey FOREIGN KEY (event_id) REFERENCES events (id) "
               "ON DELETE CASCADE) PARTITION BY RANGE (captured_at_ms)")
    op.execute("CREATE INDEX ix_event_snapshots_snapshot ON event_snapshots (snapshot_id, captured_at_ms)")
    partitions.create_default(conn)

    now_ms = int(time.time() * 1000)
    lo_ok, hi_ok = now_ms - 3653 * partitions.DAY_MS, now_ms + 31 * partitions.DAY_MS
    old_days = list(conn.execute(sa.text(
        "SELECT DISTINCT captured_at_ms / :day * :day FROM snapshots_0004 WHERE captured_at_ms >= :lo AND "
        "captured_at_ms < :hi"), {"day": partitions.DAY_MS, "lo": lo_ok, "hi": hi_ok}).scalars())
    for day in sorted(old_days):
        partitions.ensure_day(conn, day)
        op.execute(sa.text(f"COMMENT ON TABLE {partitions.partition_name('thumbnails', day)} IS "
                           f"'{partitions.LEGACY_KEYS}'"))
    partitions.ensure_ahead(conn, now_ms)

    lo, hi = conn.execute(sa.text("SELECT min(id), max(id) FROM snapshots_0004")).one()
    _batches(f"INSERT INTO snapshots ({_SNAPSHOT_COLUMNS}) SELECT {_SNAPSHOT_COLUMNS} FROM snapshots_0004 "
             "WHERE id >= :lo AND id < :hi", lo, hi)
    _batches("INSERT INTO thumbnails (snapshot_id, captured_at_ms, width, height, format, storage_key, size, etag) "
             "SELECT t.snapshot_id, s.captured_at_ms, t.width, t.height, t.format, t.storage_key, t.size, t.etag "
             "FROM thumbnails_0004 t JOIN snapshots_0004 s ON s.id = t.snapshot_id "
             "WHERE t.snapshot_id >= :lo AND t.snapshot_id < :hi", lo, hi)
    _batches("INSERT INTO event_snapshots (event_id, snapshot_id, captured_at_ms) "
             "SELECT l.event_id, l.snapshot_id, s.captured_at_ms FROM event_snapshots_0004 l "
             "JOIN snapshots_0004 s ON s.id = l.snapshot_id WHERE l.snapshot_id >= :lo AND l.snapshot_id < :hi",
             lo, hi)
    for table in partitions.TABLES:
        op.execute(f"DROP TABLE {table}_0004")
    for table in partitions.TABLES:
        op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    raise NotImplementedError("0007 (day partitions) cannot be undone in place: restore the database from the "
                              "backup taken before upgrading")
