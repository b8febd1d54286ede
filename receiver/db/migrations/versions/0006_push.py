"""push: the message outbox, webhook subscriptions and deliveries, health alert state

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'messages',
        sa.Column('id', _id, autoincrement=True, nullable=False),
        sa.Column('message_id', sa.String(length=40), nullable=False),
        sa.Column('type', sa.String(length=32), nullable=False),
        sa.Column('job_id', sa.String(length=128), nullable=True),
        sa.Column('account', sa.String(length=32), nullable=True),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('fanned_out', sa.Boolean(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('message_id'),
    )
    op.create_index('ix_messages_fanout', 'messages', ['fanned_out', 'id'], unique=False)
    op.create_index('ix_messages_created', 'messages', ['created_at'], unique=False)
    op.create_table(
        'subscriptions',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('url', sa.Text(), nullable=False),
        sa.Column('events', sa.JSON(), nullable=False),
        sa.Column('job_ids', sa.JSON(), nullable=True),
        sa.Column('accounts', sa.JSON(), nullable=True),
        sa.Column('description', sa.Text(), nullable=True),
        sa.Column('secret', sa.String(length=80), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True),
        sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'deliveries',
        sa.Column('id', _id, autoincrement=True, nullable=False),
        sa.Column('subscription_id', sa.String(length=40), nullable=False),
        sa.Column('message_id', _id, nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['subscription_id'], ['subscriptions.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_deliveries_status_next', 'deliveries', ['status', 'next_attempt_at'], unique=False)
    op.create_index('ix_deliveries_subscription_id', 'deliveries', ['subscription_id', 'id'], unique=False)
    op.create_table(
        'health_states',
        sa.Column('job_id', sa.String(length=128), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=True),
        sa.Column('since', sa.DateTime(timezone=True), nullable=True),
        sa.Column('candidate', sa.String(length=16), nullable=True),
        sa.Column('candidate_since', sa.DateTime(timezone=True), nullable=True),
        sa.Column('streak', sa.Integer(), nullable=False),
        sa.Column('evaluated_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('job_id'),
    )


def downgrade() -> None:
    op.drop_table('health_states')
    op.drop_index('ix_deliveries_subscription_id', table_name='deliveries')
    op.drop_index('ix_deliveries_status_next', table_name='deliveries')
    op.drop_table('deliveries')
    op.drop_table('subscriptions')
    op.drop_index('ix_messages_created', table_name='messages')
    op.drop_index('ix_messages_fanout', table_name='messages')
    op.drop_table('messages')
