"""triage priority: priority rules, a job's priority and the study names of a series

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "priority_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_priority_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_priority_rules_name")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("priority_reason", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("message_taken_by", sa.Integer(), nullable=True))
        batch_op.create_index("ix_jobs_status_priority", ["status", "priority"], unique=False)
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_name", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("accession_number", sa.String(length=64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("study_description", sa.String(length=64), server_default="", nullable=False))
        batch_op.add_column(sa.Column("store_priority", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("store_priority")
        batch_op.drop_column("study_description")
        batch_op.drop_column("accession_number")
        batch_op.drop_column("patient_name")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_priority")
        batch_op.drop_column("message_taken_by")
        batch_op.drop_column("priority_reason")
        batch_op.drop_column("priority")
    op.drop_table("priority_rules")
