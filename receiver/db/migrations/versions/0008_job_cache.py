"""job_cache: GetLiveSnapshotJob answers shared by every process of a deployment (without Redis)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
# The brief said 0004; this branch also carries 0007 (partitions, down_revision 0004), and two heads would stop
# `receiver db upgrade`: the lead relinks at merge.
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job_cache',
        sa.Column('job_id', sa.String(length=255), nullable=False),
        sa.Column('body', sa.Text(), nullable=True),
        sa.Column('expires_at_ms', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('lock_until_ms', sa.BigInteger(), nullable=True),
        sa.Column('lock_owner', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('job_id'),
    )


def downgrade() -> None:
    op.drop_table('job_cache')
