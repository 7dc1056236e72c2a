"""A digest of each document, so a worker can check that a message carries the
document its job holds under that sequence number without reading the text.
Rows written before it have none (workers compare their text instead).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: a plain ALTER TABLE on both databases,
    # no table rebuild and no rewrite of existing rows.
    op.add_column("dq_items", sa.Column("digest", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("dq_items") as batch:
        batch.drop_column("digest")
