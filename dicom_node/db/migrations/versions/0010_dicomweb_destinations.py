"""DICOMweb destinations: a destination's kind (dimse or dicomweb), its STOW-RS base URL, HTTP
authentication (none, basic, bearer) and TLS verification (on by default, optionally with a
private CA file). Existing destinations are DIMSE ones; an export records its destination's kind
(a DICOMweb export whose destination is removed can not be sent on).

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


COLUMNS = (
    ("kind", sa.String(length=16), "dimse"),
    ("url", sa.String(length=2000), ""),
    ("auth", sa.String(length=16), "none"),
    ("username", sa.String(length=200), ""),
    ("password", sa.Text(), ""),
    ("token", sa.Text(), ""),
    ("verify_tls", sa.Boolean(), sa.true()),
    ("ca_file", sa.String(length=1000), ""),
)


def upgrade() -> None:
    # Plain ADD COLUMN, not a batch: on SQLite a batch copies and drops the table, and with foreign
    # keys on, dropping destinations would delete the local AEs' links to them.
    for name, type_, default in COLUMNS:
        op.add_column("destinations", sa.Column(name, type_, server_default=default, nullable=False))
    op.add_column("exports", sa.Column("kind", sa.String(length=16), server_default="dimse", nullable=False))


def downgrade() -> None:
    op.drop_column("exports", "kind")
    for name, _type, _default in reversed(COLUMNS):
        op.drop_column("destinations", name)
