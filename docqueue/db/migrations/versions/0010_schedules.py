"""Schedules: runs, where each schedule's source stands, the files a directory
schedule has read, and the lease that lets one beat run them.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dq_schedule_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("schedule", sa.String(100), nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("job_ids", sa.JSON, nullable=False),
        sa.Column("mark_to", sa.JSON),
        sa.Column("documents", sa.Integer, nullable=False),
        sa.Column("reused", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("message", sa.Text),
    )
    op.create_table(
        "dq_schedule_marks",
        sa.Column("schedule", sa.String(100), primary_key=True),
        sa.Column("mark", sa.JSON),
        sa.Column("running_run", sa.Integer),
        sa.Column("heartbeat_at", sa.Float),
    )
    op.create_table(
        "dq_schedule_files",
        sa.Column("schedule", sa.String(100), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
    )
    op.create_table(
        "dq_beat_lease",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("dq_beat_lease", "dq_schedule_files", "dq_schedule_marks", "dq_schedule_runs"):
        op.drop_table(table)
