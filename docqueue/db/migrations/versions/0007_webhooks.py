"""Completion webhooks: a job's callback URL, and one delivery row per finished job
that has one.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dq_jobs") as batch:
        batch.add_column(sa.Column("callback_url", sa.String(2048)))
    op.create_table(
        "dq_webhooks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("job_id", sa.String(32), nullable=False, unique=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.Float()),
        sa.Column("lease_until", sa.Float()),
        sa.Column("delivered_at", sa.Float()),
        sa.Column("failed_at", sa.Float()),
        sa.Column("last_error", sa.Text()),
    )
    op.create_index("ix_dq_webhooks_next_at", "dq_webhooks", ["next_at"])


def downgrade() -> None:
    op.drop_table("dq_webhooks")
    with op.batch_alter_table("dq_jobs") as batch:
        batch.drop_column("callback_url")
