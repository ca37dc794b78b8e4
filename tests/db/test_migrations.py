"""The Alembic migrations (dicom_node/db/migrations) against the models (dicom_node/db/models.py),
on SQLite and on PostgreSQL.

Covers: one head; a database migrated to the head has the schema the models describe (Alembic's
autogenerate comparison finds nothing: no table, column, type, index, constraint or server default
missing or different); the data migration of revision 0005 (a destination's empty outputs become
every kind). Not covered: downgrades (the node migrates forward only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from dicom_node.cli import main
from dicom_node.db.engine import alembic_config, upgrade
from dicom_node.db.models import Base


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def _same_server_default(
    context: Any,
    inspected_column: Any,
    metadata_column: Any,
    inspected: str | None,
    metadata: Any,
    rendered: str | None,
) -> bool | None:
    """SQLite reflects a default of '' as the text "('')": compare without the parentheses and
    quotes; elsewhere Alembic's own comparison."""
    if context.dialect.name == "sqlite" and inspected is not None and rendered is not None:
        return inspected.strip("()'\"") != rendered.strip("()'\"")
    return None


def test_one_head(tmp_path: Path) -> None:
    assert len(ScriptDirectory.from_config(alembic_config(f"sqlite:///{tmp_path / 'x'}")).get_heads()) == 1


def test_the_migrations_make_the_schema_of_the_models(database_url: str, engine: sa.Engine) -> None:
    upgrade(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": _same_server_default}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_0005_names_every_kind_where_a_destination_had_none(database_url: str, engine: sa.Engine) -> None:
    upgrade(database_url, "0004")
    rows = sa.table(
        "destinations",
        *(sa.column(n) for n in ("title", "host", "port", "tls", "enabled", "description", "created_at", "updated_at")),
        sa.column("outputs", sa.JSON),
    )
    now = sa.func.now() if engine.dialect.name == "postgresql" else sa.func.datetime("now")
    with engine.begin() as conn:
        for title, outputs in (("EMPTY", []), ("SR", ["sr"])):
            conn.execute(
                rows.insert().values(
                    title=title, host="127.0.0.1", port=104, tls=False, enabled=True, description="",
                    created_at=now, updated_at=now, outputs=outputs,
                )
            )  # fmt: skip
    upgrade(database_url)
    with engine.connect() as conn:
        found = {title: outputs for title, outputs in conn.execute(sa.select(rows.c.title, rows.c.outputs))}
    assert found == {"EMPTY": ["sr", "sc", "seg", "kos", "pm"], "SR": ["sr"]}


@pytest.mark.integration
@pytest.mark.parametrize("command", [["ae", "list"], ["series", "list"], ["jobs", "list"], ["storage", "status"]])
def test_read_commands_change_nothing_in_a_database_without_the_schema(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """A read command against a new database says to run db upgrade and creates nothing: no SQLite
    file, no table in PostgreSQL; after the upgrade it reads."""
    for key in list(os.environ):
        if key.startswith("DICOM_NODE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DICOM_NODE_DATABASE_URL", database_url)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "run `dicom-node db upgrade`" in err and err.count("\n") == 1, err
    if database_url.startswith("sqlite"):
        assert not (tmp_path / "node.sqlite3").exists()
    else:
        engine = sa.create_engine(database_url)
        try:
            assert sa.inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
    assert main(["db", "upgrade"]) == 0
    assert main(command) == 0
