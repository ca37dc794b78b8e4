"""destination outputs always named: an empty list (which meant the default) becomes every kind

A destination's outputs were allowed to be empty, meaning export.default_outputs (every kind unless
a site narrowed it). The node now writes the default into the row when the destination is made and
refuses an empty list; a row left empty would send nothing, so it gets every output kind there was
when this revision was written (the site may narrow it again: ``ae`` commands or the admin pages).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

EVERY_KIND = ["sr", "sc", "seg", "kos", "pm"]
destinations = sa.table("destinations", sa.column("id", sa.Integer), sa.column("outputs", sa.JSON))


def upgrade() -> None:
    conn = op.get_bind()
    # Compared in Python: JSON equality differs between SQLite and PostgreSQL, and destinations are few.
    empty = [row.id for row in conn.execute(sa.select(destinations.c.id, destinations.c.outputs)) if not row.outputs]
    if empty:
        conn.execute(destinations.update().where(destinations.c.id.in_(empty)).values(outputs=EVERY_KIND))


def downgrade() -> None:
    pass  # every kind named is what an empty list meant by default
