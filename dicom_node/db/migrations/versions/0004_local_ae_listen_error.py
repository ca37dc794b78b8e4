"""local AE listen error: why a listener could not bind its port ("" when it listens)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("local_aes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("listen_error", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("listen_error_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("local_aes", schema=None) as batch_op:
        batch_op.drop_column("listen_error_at")
        batch_op.drop_column("listen_error")
