"""Reuse and job groups: each result records what a later job may reuse it by
(task, model fingerprint, parameters digest, text hash, indexed together) and
whether it was itself copied; a job says whether it reuses, and which multi-task
group it belongs to.

Existing results get their job's task and their document's digest; their model
fingerprint is unknown (NULL), so nothing made before this revision is ever
reused: a fingerprint cannot be guessed after the fact.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN on both databases: nullable columns, or a
    # constant default, need no table rebuild.
    op.add_column(
        "dq_jobs", sa.Column("reuse", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("dq_jobs", sa.Column("group_id", sa.String(32)))
    op.create_index("ix_dq_jobs_group_id", "dq_jobs", ["group_id"])
    for column in (
        sa.Column("task", sa.String(16)),
        sa.Column("fingerprint", sa.String(128)),
        sa.Column("params_digest", sa.String(64)),
        sa.Column("text_hash", sa.String(64)),
        sa.Column("reused", sa.Boolean(), nullable=False, server_default=sa.false()),
    ):
        op.add_column("dq_results", column)
    op.execute(
        "UPDATE dq_results SET "
        "task = (SELECT dq_jobs.task FROM dq_jobs WHERE dq_jobs.id = dq_results.job_id), "
        "text_hash = (SELECT dq_items.digest FROM dq_items "
        "WHERE dq_items.job_id = dq_results.job_id AND dq_items.seq = dq_results.seq)"
    )
    op.create_index(
        "ix_dq_results_reuse",
        "dq_results",
        ["task", "fingerprint", "params_digest", "text_hash"],
    )


def downgrade() -> None:
    op.drop_index("ix_dq_results_reuse", table_name="dq_results")
    with op.batch_alter_table("dq_results") as batch:
        for name in ("reused", "text_hash", "params_digest", "fingerprint", "task"):
            batch.drop_column(name)
    op.drop_index("ix_dq_jobs_group_id", table_name="dq_jobs")
    with op.batch_alter_table("dq_jobs") as batch:
        batch.drop_column("group_id")
        batch.drop_column("reuse")
