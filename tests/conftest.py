"""Shared fixtures (temporary data dirs, databases on SQLite and PostgreSQL, Redis, Orthanc) and
the test tiers.

Tiers, by marker (pyproject.toml lists them):

- ``services``: the test needs a server or an external program (PostgreSQL, Redis, Orthanc, DCMTK,
  dicom3tools, pixelmed, Chromium, a ``dicom-node serve`` subprocess). Set here for every test of
  an ``integration``, ``e2e`` or ``browser`` module, every test using the PostgreSQL, Redis or
  Orthanc fixtures (the PostgreSQL half of ``database_url`` included), and by hand on the few
  others that run a tool.
- ``slow``: more than a few seconds of CPU (training, Integrated Gradients, whole-node runs).
- ``unit``: set here on every other test: the fast tier, ``tests/run -m unit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from dicom_node.db import Database, upgrade
from tests.harness.brokers import PrivateRabbitMQ
from tests.harness.peers import Orthanc, create_postgres_database, drop_postgres_database, redis_db_url


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
def db(database_url: str) -> Iterator[Database]:
    """The node's database at ``database_url``, migrated to the head (SQLite and PostgreSQL)."""
    upgrade(database_url)
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def redis_url() -> str:
    return redis_db_url()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of the test session's own (tests.harness.brokers), never the shared
    one: tests may restart it, and its queues are nobody else's."""
    server = PrivateRabbitMQ(tmp_path_factory.mktemp("rabbitmq")).start()
    yield server
    server.remove()


SERVICE_FIXTURES = frozenset({"postgres_url", "redis_url", "orthanc", "rabbitmq"})
SERVICE_MARKERS = ("integration", "e2e", "browser", "container")


def _needs_services(item: pytest.Item) -> bool:
    if any(item.get_closest_marker(name) for name in SERVICE_MARKERS):
        return True
    if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("database_url") == "postgresql"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("services") is None and _needs_services(item):
            item.add_marker(pytest.mark.services)
        if item.get_closest_marker("services") is None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.unit)
