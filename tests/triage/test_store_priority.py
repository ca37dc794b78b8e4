"""The priority rules on a running listener: ``dicom-node serve`` as a subprocess (SQLite),
pynetdicom's SCU and DCMTK's storescu as two scanners.

Covers: the C-STORE Priority of the requests reaching the rules (a series sent with HIGH by
pynetdicom gets the rule's stat; the same rule leaves storescu's MEDIUM series routine), the study
attributes (patient name, accession, study description) read from the stored files and shown with
the job (``jobs list --json``). Not covered: a worker (tests/e2e/test_priority.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE

from model.phantoms.writer import write_phantom_series
from tests.harness.peers import NodeProcess, cli, cli_json, free_port, node_env, storescu, wait_until

pytestmark = pytest.mark.integration

TITLE = "TRIAGENODE"


def _jobs(env: dict[str, str]) -> list[dict[str, Any]]:
    return list(cli_json(env, "jobs", "list", "--json"))


def _send_with_pynetdicom(folder: Path, port: int, priority: int) -> None:
    ae = AE(ae_title="PYNETSCU")
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=TITLE)
    assert assoc.is_established
    try:
        for n, ds in enumerate(datasets, start=1):
            status = assoc.send_c_store(ds, msg_id=n, priority=priority)
            assert status.Status == 0x0000
    finally:
        assoc.release()


def test_the_c_store_priority_and_the_study_names_reach_the_job(tmp_path: Path) -> None:
    env = node_env(tmp_path / "data", admin_port=free_port(), listener__processes=1, completion__poll_seconds=0.2)
    port = free_port()
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-local", TITLE, "--port", str(port), "--quiet-seconds", "1", "--allow-any-source")
    cli(env, "triage", "add-priority-rule", "sent-high", "--priority", "stat", "--store-priority", "HIGH")
    high = write_phantom_series(
        "normal",
        tmp_path / "high",
        seed=81,
        slices=4,
        rows=32,
        columns=32,
        patient_name="Urgent^Ann",
        write_masks=False,
    )
    for path in high.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = "ACC-81"
        ds.StudyDescription = "CT THORAX EMERGENCY"
        ds.save_as(path)
    medium = write_phantom_series(
        "normal", tmp_path / "medium", seed=82, slices=4, rows=32, columns=32, write_masks=False
    )
    serve = NodeProcess(env, ["serve", "--no-admin"]).start()
    try:
        serve.wait_for_port(port, timeout=240)
        _send_with_pynetdicom(high, port, priority=1)  # PS3.7: 1 = HIGH
        sent = storescu(medium, port, calling="STORESCU", called=TITLE)
        assert sent.returncode == 0, sent.stderr
        jobs = wait_until(lambda: j if len(j := _jobs(env)) == 2 else None, 180, "two jobs")
    finally:
        serve.stop()
    by_patient = {j["patient_name"]: j for j in jobs}
    urgent = by_patient["Urgent^Ann"]
    assert (urgent["priority"], urgent["priority_reason"]) == ("stat", "rule sent-high")
    assert (urgent["accession_number"], urgent["study_description"]) == ("ACC-81", "CT THORAX EMERGENCY")
    (other,) = [j for j in jobs if j is not urgent]
    assert (other["priority"], other["priority_reason"]) == ("routine", "no priority rule matched")
