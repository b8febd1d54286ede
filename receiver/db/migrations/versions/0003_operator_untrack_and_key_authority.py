"""operator untrack and key authority

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_from_ice', sa.Boolean(), server_default='0', nullable=False))
    # Events the reconciler wrote before this revision carry keys from ListLiveSnapshotFiles.
    op.execute("UPDATE events SET key_from_ice = (origin = 'reconcile')")

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('untracked', sa.Boolean(), server_default='0', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('untracked')

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_column('key_from_ice')

