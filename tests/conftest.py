"""Shared fixtures: temporary data dirs, databases (SQLite and PostgreSQL), Redis, Orthanc."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.peers import Orthanc, create_postgres_database, drop_postgres_database, redis_db_url


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "node-data"
    path.mkdir()
    return path


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url, name = create_postgres_database()
    yield url
    drop_postgres_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test using this runs twice: on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.sqlite3'}"
    else:
        url, name = create_postgres_database()
        yield url
        drop_postgres_database(name)


@pytest.fixture
def redis_url() -> str:
    return redis_db_url()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()
