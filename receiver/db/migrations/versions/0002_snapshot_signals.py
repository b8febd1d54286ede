"""snapshot signals: luma, luma spread, dHash, placeholder (stream health, issue 7)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows indexed before this revision get values from `receiver backfill-signals`.
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('luma', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('luma_spread', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('dhash', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('placeholder', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('snapshots', schema=None) as batch_op:
        batch_op.drop_column('placeholder')
        batch_op.drop_column('dhash')
        batch_op.drop_column('luma_spread')
        batch_op.drop_column('luma')
