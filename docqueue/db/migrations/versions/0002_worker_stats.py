"""Worker statistics in the heartbeat: batches, padded tokens, peak memory.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dq_workers") as batch:
        batch.add_column(sa.Column("batches", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("padded_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("peak_host_bytes", sa.BigInteger()))
        batch.add_column(sa.Column("peak_gpu_bytes", sa.BigInteger()))


def downgrade() -> None:
    with op.batch_alter_table("dq_workers") as batch:
        batch.drop_column("peak_gpu_bytes")
        batch.drop_column("peak_host_bytes")
        batch.drop_column("padded_tokens")
        batch.drop_column("batches")
