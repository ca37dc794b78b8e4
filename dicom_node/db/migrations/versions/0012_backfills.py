"""backfills: past studies of a source PACS retrieved and analysed at low priority, and the
series each one found (what is left to retrieve after a restart)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfills",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("local_ae", sa.String(length=16), nullable=False),
        sa.Column("date_from", sa.String(length=8), nullable=False),
        sa.Column("date_to", sa.String(length=8), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("accessions", sa.JSON(), nullable=False),
        sa.Column("rate_per_hour", sa.Float(), nullable=False),
        sa.Column("window", sa.String(length=11), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("run_by", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfills")),
    )
    op.create_index(op.f("ix_backfills_status"), "backfills", ["status"], unique=False)
    op.create_table(
        "backfill_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backfill_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("series_description", sa.String(length=64), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("retrieved_instances", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retrieved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["backfill_id"], ["backfills.id"], name=op.f("fk_backfill_series_backfill_id_backfills"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfill_series")),
        sa.UniqueConstraint("backfill_id", "series_uid", name="uq_backfill_series_backfill_series"),
    )
    op.create_index(op.f("ix_backfill_series_series_uid"), "backfill_series", ["series_uid"], unique=False)
    op.create_index(op.f("ix_backfill_series_status"), "backfill_series", ["status"], unique=False)


def downgrade() -> None:
    op.drop_table("backfill_series")
    op.drop_table("backfills")
