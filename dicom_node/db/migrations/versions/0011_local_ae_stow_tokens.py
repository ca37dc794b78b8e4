"""STOW-RS input: the API tokens allowed to store instances into each local AE by STOW-RS
(POST /dicomweb/<title>/studies). A local AE starts with none: STOW-RS to it is refused until an
admin allows a token (``dicom-node ae update-local TITLE --stow-tokens ID``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "local_ae_stow_tokens",
        sa.Column("local_ae_id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["local_ae_id"],
            ["local_aes.id"],
            name=op.f("fk_local_ae_stow_tokens_local_ae_id_local_aes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name=op.f("fk_local_ae_stow_tokens_token_id_api_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("local_ae_id", "token_id", name=op.f("pk_local_ae_stow_tokens")),
    )


def downgrade() -> None:
    op.drop_table("local_ae_stow_tokens")
