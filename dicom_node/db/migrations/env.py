"""Alembic environment: runs migrations on the URL set by dicom_node.db.engine.alembic_config."""

from __future__ import annotations

from alembic import context

from dicom_node.db.engine import make_engine
from dicom_node.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `dicom-node db upgrade`")
run_migrations_online()
