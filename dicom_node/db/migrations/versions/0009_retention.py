"""retention: series size and purge time, a local AE's own image retention, counters; instance
sizes in 64 bits (a 2 GB Enhanced CT does not fit a 32-bit integer)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("size_bytes", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.alter_column("size_bytes", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
    with op.batch_alter_table("local_aes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keep_images_days", sa.Float(), nullable=True))
    op.create_table(
        "node_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_node_counters")),
    )
    # The series received before this revision: their size from their instances.
    op.execute(
        "UPDATE series SET size_bytes = COALESCE("
        "(SELECT SUM(instances.size_bytes) FROM instances WHERE instances.series_id = series.id), 0)"
    )


def downgrade() -> None:
    op.drop_table("node_counters")
    with op.batch_alter_table("local_aes", schema=None) as batch_op:
        batch_op.drop_column("keep_images_days")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.alter_column("size_bytes", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
        batch_op.drop_column("size_bytes")
