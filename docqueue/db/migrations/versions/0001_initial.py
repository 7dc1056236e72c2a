"""Jobs, items, results and worker heartbeats.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dq_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("lane", sa.String(16), nullable=False),
        sa.Column("source", sa.String(1024)),
        sa.Column("total", sa.Integer()),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "dq_items",
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("dq_jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.String(512)),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("chat", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("duplicate_id", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_dq_items_job_status", "dq_items", ["job_id", "status"])
    op.create_index("ix_dq_items_job_user", "dq_items", ["job_id", "user_id"])
    op.create_table(
        "dq_results",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("output", sa.JSON()),
        sa.Column("embedding", sa.LargeBinary()),
        sa.Column("error", sa.Text()),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("batch_size", sa.Integer()),
        sa.Column("enqueued_at", sa.Float()),
        sa.Column("started_at", sa.Float()),
        sa.Column("finished_at", sa.Float()),
        sa.ForeignKeyConstraint(
            ["job_id", "seq"], ["dq_items.job_id", "dq_items.seq"], ondelete="CASCADE"
        ),
    )
    op.create_table(
        "dq_workers",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("documents", sa.Integer(), nullable=False),
        sa.Column("stopped", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dq_workers")
    op.drop_table("dq_results")
    op.drop_index("ix_dq_items_job_user", table_name="dq_items")
    op.drop_index("ix_dq_items_job_status", table_name="dq_items")
    op.drop_table("dq_items")
    op.drop_table("dq_jobs")
