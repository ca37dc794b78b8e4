"""kill -9 of the whole node during a series, restart, the sender resumes, a few rounds
on SQLite and on PostgreSQL (tests.harness.crash; benchmarks/reliability.py runs 20): every
instance acknowledged before the kill is stored and indexed after the restart (0 lost), and the
series is analysed once, whole (0 jobs for a partial series: the downtime is not a quiet period)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import pytest

from model.phantoms.writer import write_phantom_series
from tests.harness.crash import crash_round
from tests.harness.peers import cli, create_postgres_database, drop_postgres_database, free_port, node_env

pytestmark = pytest.mark.integration

ROUNDS = 2


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    url, name = create_postgres_database()
    yield url
    drop_postgres_database(name)


def test_kill_9_during_a_series_loses_no_acknowledged_instance_and_makes_no_partial_job(
    database: str | None, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = node_env(
        data_dir,
        database_url=database,
        admin_port=free_port(),
        listener__processes=2,
        listener__reload_seconds=0.5,
        completion__poll_seconds=0.2,
    )
    url = database or f"sqlite:///{data_dir / 'dicom-node.sqlite3'}"
    port = free_port()
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-local", "COVIDNODE", "--port", str(port), "--quiet-seconds", "2")
    cli(env, "ae", "add-source", "STORESCU")
    rng = random.Random(8)
    for n in range(ROUNDS):
        series = write_phantom_series(
            "normal", tmp_path / f"series-{n}", seed=100 + n, slices=60, rows=128, columns=128
        )
        result = crash_round(env, port, series, url, rng)
        print(
            f"round {n}: killed after {result.killed_after:.2f} s, {result.acknowledged} acknowledged, {result.lost} "
            f"lost, {result.jobs} job(s), {result.partial_jobs} partial"
        )
        assert result.lost == 0, result
        assert result.partial_jobs == 0 and result.jobs == 1 and result.instances == 60, result
