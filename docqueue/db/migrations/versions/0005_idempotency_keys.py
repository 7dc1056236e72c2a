"""Idempotency keys: a job remembers the key of the request that created it, so a
retried request finds it instead of creating a second job.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column and an index: plain statements on both databases, no table
    # rebuild.  A unique index admits any number of NULLs (jobs without a key).
    op.add_column("dq_jobs", sa.Column("idempotency_key", sa.String(255)))
    op.create_index("ix_dq_jobs_idempotency_key", "dq_jobs", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_dq_jobs_idempotency_key", table_name="dq_jobs")
    with op.batch_alter_table("dq_jobs") as batch:
        batch.drop_column("idempotency_key")
