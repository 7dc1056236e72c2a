"""Jobs you can manage: names, input digests, cancellation, tombstones of deleted
jobs, and a status column wide enough for "cancelled".

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dq_jobs") as batch:
        batch.add_column(sa.Column("name", sa.String(200)))
        batch.add_column(sa.Column("input_digest", sa.String(64)))
        batch.add_column(sa.Column("cancelled_at", sa.Float()))
        batch.create_index("ix_dq_jobs_name", ["name"])
    with op.batch_alter_table("dq_items") as batch:
        batch.alter_column(
            "status", existing_type=sa.String(8), type_=sa.String(16), existing_nullable=False
        )
    op.create_table(
        "dq_tombstones",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("deleted_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dq_tombstones")
    with op.batch_alter_table("dq_items") as batch:
        batch.alter_column(
            "status", existing_type=sa.String(16), type_=sa.String(8), existing_nullable=False
        )
    with op.batch_alter_table("dq_jobs") as batch:
        batch.drop_index("ix_dq_jobs_name")
        batch.drop_column("cancelled_at")
        batch.drop_column("input_digest")
        batch.drop_column("name")
