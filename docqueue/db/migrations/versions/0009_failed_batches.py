"""Failed batches: a batch whose input file has no line that can run, or that names
a model no worker has served, is kept as OpenAI keeps it (status ``failed``, with
its ``errors``) and has no job, so its ``job_id`` may be null.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite cannot drop a NOT NULL in place: batch mode copies the (small) table.
    with op.batch_alter_table("dq_batches") as batch:
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM dq_batches WHERE job_id IS NULL")
    with op.batch_alter_table("dq_batches") as batch:
        batch.alter_column("job_id", existing_type=sa.String(32), nullable=False)
