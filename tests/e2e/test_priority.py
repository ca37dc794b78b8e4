"""A STAT series sent behind a backlog runs next, with each broker: the SQLite-file broker (the
default), a private Redis and a private RabbitMQ (tests.harness.brokers), ``dicom-node serve``
and one worker (one process) as subprocesses, storescu as the scanners.

Twenty routine series are sent by one calling AE; once the worker runs the first and at least
fifteen wait, a series comes from the emergency department's scanner (calling AE ``ER_CT``), for
which a priority rule set with the command line says stat. The STAT job is the first job to start
after it was made, while routine jobs still wait.

Not covered: what the results say (the series are small and the model may call them no_decision;
tests/e2e/test_results.py checks results), the order among equals in the broker's hands
(tests/jobs/test_priority_queue.py), the time it saves (benchmarks/triage.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from model.phantoms.writer import write_phantom_series
from tests.e2e.stack import Node, job_of, series_uids
from tests.harness.brokers import PrivateRabbitMQ, PrivateRedis
from tests.harness.peers import cli, storescu

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BACKLOG = 20


@pytest.fixture(scope="module")
def small_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """BACKLOG + 1 small CT series (8 slices of 64 x 64), each its own study."""
    root = tmp_path_factory.mktemp("small-series")
    return [
        write_phantom_series("normal", root / f"ct-{seed}", seed=seed, slices=8, rows=64, columns=64, write_masks=False)
        for seed in range(700, 701 + BACKLOG)
    ]


@pytest.mark.parametrize("kind", ["sqlite", "redis", "rabbitmq"])
def test_a_stat_series_sent_last_starts_next(tmp_path: Path, kind: str, small_series: list[Path]) -> None:
    broker: PrivateRedis | PrivateRabbitMQ | None = None
    if kind == "redis":
        broker = PrivateRedis(tmp_path / "redis").start()
    elif kind == "rabbitmq":
        broker = PrivateRabbitMQ(tmp_path / "rabbitmq").start()
    node = Node(tmp_path, broker_url=broker.url if broker else None, worker__concurrency=1)
    node.configure([])
    cli(node.env, "triage", "add-priority-rule", "emergency", "--priority", "stat", "--calling-ae", "ER_CT")
    *routine, urgent = small_series
    routine_uids = [series_uids(f)[1] for f in routine]
    urgent_uid = series_uids(urgent)[1]
    try:
        node.start("serve", "--no-admin").wait_for_port(node.port, timeout=240)
        node.start("worker")
        for folder in routine:
            node.send(folder)
        node.wait(
            lambda jobs: (
                _count(jobs, routine_uids, ("running", "done", "failed")) >= 1
                and _count(jobs, routine_uids, ("pending", "queued")) >= 15
            ),
            300,
            "a routine job to run with fifteen waiting",
        )
        sent = storescu(urgent, node.port, calling="ER_CT", called=node.title)
        assert sent.returncode == 0, sent.stderr
        stat = node.wait(
            lambda jobs: (j := job_of(jobs, urgent_uid)) and j["started_at"] and j,
            300,
            "the STAT job to start",
        )
        jobs = node.jobs()
    finally:
        node.stop()
        if broker is not None:
            broker.stop()

    assert stat["priority"] == "stat" and stat["priority_reason"] == "rule emergency", stat
    started_since = sorted(
        (j["started_at"], j["series_uid"])
        for j in jobs
        if j["started_at"] and j["started_at"] >= stat["created_at"] and j["series_uid"] in routine_uids
    )
    assert [uid for at, uid in started_since if at < stat["started_at"]] == [], "a routine job started first"
    waiting_then = [
        j
        for j in jobs
        if j["series_uid"] in routine_uids and (not j["started_at"] or j["started_at"] > stat["started_at"])
    ]
    assert len(waiting_then) >= 10, "routine jobs were still waiting when the STAT job started"
    assert all(j["priority"] == "routine" for j in jobs if j["series_uid"] in routine_uids)


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def _count(jobs: list[dict[str, Any]], uids: list[str], states: tuple[str, ...]) -> int:
    return sum(1 for uid in uids if (j := job_of(jobs, uid)) and j["status"] in states)
