"""From a CT series sent by DCMTK's storescu to results in Orthanc, with real peers only:
``dicom-node serve`` and ``dicom-node worker`` as subprocesses, Redis as the broker, SQLite and
then PostgreSQL as the database, the shipped model.

Covers: the SR, SC, SEG and KOS arrive in Orthanc (read back over its REST API), each exactly
once, in the source study, referring to the source series; dciodvfy and pixelmed's SR validator
report no error (known validator disagreements aside, tests/outputs/validators.py); the job and
its export are recorded (``dicom-node jobs list --json``). Not covered here: faults
(test_faults.py) and ``dicom-node up`` (test_up.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from tests.e2e.conftest import KIND
from tests.e2e.stack import Node, check_finding, check_results, done_and_exported, series_uids
from tests.harness.peers import Orthanc, cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_results_arrive_in_pacs(
    tmp_path: Path, database_url: str, redis_url: str, orthanc: Orthanc, phantom: Callable[[int], Path]
) -> None:
    series = phantom(11)
    study_uid, series_uid = series_uids(series)
    node = Node(tmp_path, database_url=database_url, broker_url=redis_url)
    node.configure([("ORTHANC", orthanc.dicom_port)])
    try:
        node.start("serve", "--no-admin").wait_for_port(node.port)
        node.start("worker")
        node.send(series)
        job = node.wait(done_and_exported(series_uid), 300, "the job to be done and exported")
        assert job["attempts"] == 1 and job["decision"] == KIND
        arrived = check_results(orthanc, tmp_path / "pacs", job, study_uid, series_uid, node.db)
        check_finding(arrived, series, KIND)

        listed = json.loads(cli(node.env, "jobs", "list", "--json").stdout)
        assert [j["id"] for j in listed] == [job["id"]]
        row = listed[0]
        assert row["status"] == "done" and row["probabilities"][KIND] > 0.5
        assert set(row["timings"]) >= {"queue_wait", "load", "inference", "encoding", "export"}
        assert [(e["destination"], e["status"], e["attempts"]) for e in row["exports"]] == [("ORTHANC", "done", 1)]
    finally:
        node.stop()
