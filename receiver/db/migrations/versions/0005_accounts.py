"""accounts: the account of each job and event, and the UserId a callback's envelope named

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every row so far was the one account's: server_default fills them in without a rewrite on PostgreSQL.
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('account', sa.String(length=32), nullable=False, server_default='default'))
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('account', sa.String(length=32), nullable=False, server_default='default'))
        batch.add_column(sa.Column('user_id', sa.String(length=64), nullable=True))
    op.create_index('ix_jobs_account_job_id', 'jobs', ['account', 'job_id'])


def downgrade() -> None:
    op.drop_index('ix_jobs_account_job_id', table_name='jobs')
    with op.batch_alter_table('events') as batch:
        batch.drop_column('user_id')
        batch.drop_column('account')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('account')
