"""A seeded fuzz run against `dicom-node serve`: 2,000 connections of mutated
A-ASSOCIATE-RQs, random bytes and PDU headers, and, inside associations from an allowed AE,
mutated P-DATA fragments, command sets and data sets (tests.harness.hostile.fuzz_cases).
Asserted afterwards: no listener process crashed (the same ones serve), each under the RSS bound, a
real storescu succeeds, and every instance answered Success is stored and indexed (0 lost).
benchmarks/reliability.py runs longer ones."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Instance
from model.phantoms.writer import write_phantom_series
from tests.harness.hostile import fuzz_cases, fuzz_dataset, listener_processes, max_listener_rss, run_fuzz
from tests.harness.peers import NodeProcess, cli, free_port, node_env, storescu, wait_until

pytestmark = pytest.mark.integration

SEED = 20261130
CASES = 2000
RSS_BOUND = 300 * 2**20


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[dict[str, str], int, NodeProcess]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = node_env(
        data_dir, admin_port=free_port(), listener__processes=2, listener__reload_seconds=0.5,
        listener__association_timeout_seconds=5, listener__network_timeout_seconds=5, completion__poll_seconds=0.5,
    )  # fmt: skip
    port = free_port()
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-local", "COVIDNODE", "--port", str(port), "--quiet-seconds", "2")
    cli(env, "ae", "add-source", "STORESCU")
    cli(env, "ae", "add-source", "FUZZER")
    process = NodeProcess(env, ["serve"]).start()
    process.wait_for_port(port)
    yield env, port, process
    process.stop()


def test_seeded_fuzz_leaves_the_listener_serving_within_bounds_and_loses_nothing(
    node: tuple[dict[str, str], int, NodeProcess], tmp_path: Path
) -> None:
    env, port, process = node
    assert process.proc is not None
    pid = process.proc.pid
    listeners = sorted(
        p.pid
        for p in wait_until(
            lambda: listener_processes(pid) if len(listener_processes(pid)) == 2 else None, 60, "2 listeners"
        )
    )
    report = run_fuzz(
        port,
        fuzz_cases(SEED, CASES, called="COVIDNODE", calling="FUZZER", dataset=fuzz_dataset()),
        called="COVIDNODE",
        calling="FUZZER",
    )
    print(
        f"fuzz: {report.cases} cases in {report.seconds:.0f} s, {len(report.successes)} stored, {report.failures} "
        "refused instances"
    )
    assert report.cases == CASES
    assert sorted(p.pid for p in listener_processes(pid)) == listeners, process.output()[-3000:]
    assert max_listener_rss(pid) < RSS_BOUND
    series = write_phantom_series("normal", tmp_path / "series", seed=6, slices=4, rows=64, columns=64)
    sent = storescu(series, port)
    assert sent.returncode == 0, sent.stderr
    db = Database(f"sqlite:///{Path(env['DICOM_NODE_DATA_DIR']) / 'dicom-node.sqlite3'}")
    try:
        with db.session() as s:
            indexed = {
                row.sop_instance_uid: row.path
                for row in s.scalars(select(Instance).where(Instance.sop_instance_uid.in_(report.successes)))
            }
    finally:
        db.dispose()
    lost = [
        uid
        for uid in report.successes
        if uid not in indexed or not (Path(env["DICOM_NODE_DATA_DIR"]) / "storage" / indexed[uid]).is_file()
    ]
    assert lost == [], f"{len(lost)} acknowledged instance(s) not stored and indexed"
