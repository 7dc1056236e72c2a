"""Files and batches of the OpenAI-compatible Batch API: uploaded files kept in the
database in chunks (so every API process sees them), and each batch with the job
that runs it.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dq_files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(1024), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("digest", sa.String(64)),
    )
    op.create_index("ix_dq_files_idempotency_key", "dq_files", ["idempotency_key"], unique=True)
    op.create_table(
        "dq_file_chunks",
        sa.Column(
            "file_id",
            sa.String(64),
            sa.ForeignKey("dq_files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("n", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "dq_batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "job_id", sa.String(32), sa.ForeignKey("dq_jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON()),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("expired_at", sa.Float()),
    )
    op.create_index("ix_dq_batches_job_id", "dq_batches", ["job_id"], unique=True)
    op.create_index("ix_dq_batches_created_at", "dq_batches", ["created_at"])


def downgrade() -> None:
    op.drop_table("dq_batches")
    op.drop_table("dq_file_chunks")
    op.drop_table("dq_files")
