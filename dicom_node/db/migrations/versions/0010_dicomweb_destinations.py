"""DICOMweb destinations: a destination's kind (dimse or dicomweb), its STOW-RS base URL, HTTP
authentication (none, basic, bearer) and TLS verification (on by default, optionally with a
private CA file). Existing destinations are DIMSE ones.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("destinations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="dimse", nullable=False))
        batch_op.add_column(sa.Column("url", sa.String(length=2000), server_default="", nullable=False))
        batch_op.add_column(sa.Column("auth", sa.String(length=16), server_default="none", nullable=False))
        batch_op.add_column(sa.Column("username", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("password", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("token", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("verify_tls", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column("ca_file", sa.String(length=1000), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("destinations", schema=None) as batch_op:
        for name in ("ca_file", "verify_tls", "token", "password", "username", "auth", "url", "kind"):
            batch_op.drop_column(name)
