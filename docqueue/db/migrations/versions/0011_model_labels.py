"""Model labels: the name a person gave a job's model, where the model's name is an
internal one (annotate names a model by a digest of its directory, ``m-caf98a2c5f``,
and shows ``minilm`` or the directory instead).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dq_jobs", sa.Column("model_label", sa.String(1024)))


def downgrade() -> None:
    with op.batch_alter_table("dq_jobs") as batch:
        batch.drop_column("model_label")
