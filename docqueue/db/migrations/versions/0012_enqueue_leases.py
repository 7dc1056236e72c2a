"""Enqueue leases: a producer holds the job it is adding documents to (renewing
``lease_until``); a job whose lease lapsed before its documents were all in is
closed as failed (``failed_at``, ``failure``).  Jobs made before this revision
have no lease, and are never closed so.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns: a plain ALTER TABLE ADD COLUMN on both databases.
    op.add_column("dq_jobs", sa.Column("lease_until", sa.Float()))
    op.add_column("dq_jobs", sa.Column("failed_at", sa.Float()))
    op.add_column("dq_jobs", sa.Column("failure", sa.Text()))
    op.create_index("ix_dq_jobs_lease_until", "dq_jobs", ["lease_until"])


def downgrade() -> None:
    op.drop_index("ix_dq_jobs_lease_until", table_name="dq_jobs")
    with op.batch_alter_table("dq_jobs") as batch:
        batch.drop_column("failure")
        batch.drop_column("failed_at")
        batch.drop_column("lease_until")
