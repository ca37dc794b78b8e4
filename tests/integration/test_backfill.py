"""Backfill (`dicom-node backfill`) against Orthanc as the source PACS: `dicom-node serve` as a
subprocess (listener and completion; no worker, so the jobs wait and their priority shows), four
small phantom studies stored in a private Orthanc by storescu, on SQLite.

Covers: a dry run lists what would come and retrieves nothing; C-FIND (study, then series level)
by date range and modality and by a file of accession numbers; C-MOVE to the node's own AE and
C-GET, the instances stored once through the listener's storage path, their series completed and
queued at low priority with the backfill as the reason; a series already queued or analysed is
not taken again (and with --force its job runs again); a backfill interrupted mid-way resumes
where it stopped and finishes without storing anything twice; QIDO-RS / WADO-RS from Orthanc's
DICOMweb plugin as the alternative source; --list. Not covered: the analysis itself (the e2e
tests) and the off-peak waits (tests/pipeline/test_backfill_times.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest
from sqlalchemy import func, select, update

from dicom_node.db.models import Backfill, BackfillSeries, Series
from model.phantoms.writer import write_phantom_series
from tests.e2e.stack import Node, series_uids
from tests.harness.peers import Orthanc, cli, cli_json, storescu, wait_until

# Each dicom-node command takes seconds on a busy two-core machine; these run a dozen.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

SCU = "COVIDCTNODE"  # the node's calling AE title (export.calling_ae_title)
EVERY_DATE = ("--from", "1900-01-01", "--to", "2100-12-31")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four small CT phantom studies with accession numbers ACC1..ACC4."""
    root = tmp_path_factory.mktemp("backfill-studies")
    out = []
    for n in range(1, 5):
        folder = write_phantom_series(
            "normal", root / f"ct-{n}", seed=900 + n, slices=8, rows=64, columns=64, write_masks=False
        )
        for path in folder.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            ds.AccessionNumber = f"ACC{n}"
            ds.save_as(path)
        out.append(folder)
    return out


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    node = Node(tmp_path)
    node.configure([])
    yield node
    node.stop()


@pytest.fixture
def pacs(tmp_path: Path, node: Node, studies: list[Path]) -> Iterator[Orthanc]:
    """Orthanc holding the studies; it knows the node's local AE as a move destination and the
    node's calling AE (C-FIND, C-GET), and serves DICOMweb."""
    modalities = {"node": [node.title, "127.0.0.1", node.port], "scu": [SCU, "127.0.0.1", 104]}
    orthanc = Orthanc(tmp_path / "orthanc", modalities=modalities, dicomweb=True).start()
    try:
        for folder in studies:
            sent = storescu(folder, orthanc.dicom_port, called=orthanc.aet)
            assert sent.returncode == 0, sent.stderr
        cli(node.env, "ae", "add-destination", orthanc.aet, "--host", "127.0.0.1", "--port", str(orthanc.dicom_port))
        yield orthanc
    finally:
        orthanc.stop()


def _accessions(tmp_path: Path, *numbers: str) -> str:
    path = tmp_path / f"accessions-{'-'.join(numbers)}.txt"
    path.write_text("# accession numbers\n" + "\n".join(numbers) + "\n")
    return str(path)


def _backfill(node: Node, *args: str) -> dict[str, Any]:
    out = cli(node.env, "backfill", "--source", "ORTHANC", *args, timeout=300)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _jobs_by_series(node: Node) -> dict[str, dict[str, Any]]:
    return {j["series_uid"]: j for j in node.jobs()}


def _wait_jobs(node: Node, uids: list[str]) -> dict[str, dict[str, Any]]:
    try:
        return dict(
            wait_until(
                lambda: (jobs := _jobs_by_series(node)) and all(u in jobs for u in uids) and jobs, 60, "the jobs"
            )
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node.logs()}") from None


def _instances(node: Node, uid: str) -> int:
    with node.db.session() as s:
        return int(s.scalar(select(Series.instances).where(Series.series_uid == uid)) or 0)


def test_backfill_by_move_and_get_low_priority_once_and_resumable(
    tmp_path: Path, node: Node, pacs: Orthanc, studies: list[Path]
) -> None:
    uids = [series_uids(f)[1] for f in studies]
    node.start("serve", "--no-admin").wait_for_port(node.port, timeout=240)

    dry = cli(node.env, "backfill", "--source", "ORTHANC", *EVERY_DATE, "--modality", "CT", "--dry-run", "--json")
    rows = json.loads(dry.stdout)
    assert sorted(r["series_uid"] for r in rows) == sorted(uids)
    assert {r["action"] for r in rows} == {"planned"}
    assert {r["accession_number"] for r in rows} == {"ACC1", "ACC2", "ACC3", "ACC4"}
    with node.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Series)) == 0, "a dry run retrieved something"

    # C-MOVE to the node's own AE, two studies picked by accession number.
    moved = _backfill(node, "--accessions", _accessions(tmp_path, "ACC1", "ACC2"), "--modality", "CT")
    assert moved["status"] == "done" and moved["method"] == "move", moved
    assert moved["series"] == {"retrieved": 2}, moved
    jobs = _wait_jobs(node, uids[:2])
    for uid in uids[:2]:
        assert jobs[uid]["priority"] == "low", jobs[uid]
        assert jobs[uid]["priority_reason"] == f"backfill {moved['id']}", jobs[uid]
        assert _instances(node, uid) == 8

    # C-GET of the third; the first is queued already and is not taken again.
    got = _backfill(node, "--accessions", _accessions(tmp_path, "ACC1", "ACC3"), "--retrieve", "get")
    assert got["method"] == "get" and got["series"] == {"retrieved": 1, "skipped": 1}, got
    jobs = _wait_jobs(node, uids[:3])
    assert jobs[uids[2]]["priority"] == "low" and jobs[uids[2]]["priority_reason"] == f"backfill {got['id']}"
    assert _instances(node, uids[2]) == 8
    skipped = cli_json(node.env, "backfill", "--list", "--json")[0]
    assert skipped["series"] == {"retrieved": 1, "skipped": 1}

    # Interrupted mid-way: the fourth study's series was being retrieved when the command died.
    bf = _backfill(node, "--accessions", _accessions(tmp_path, "ACC4"))
    with node.db.session() as s:
        s.execute(update(Backfill).where(Backfill.id == bf["id"]).values(status="retrieving", finished_at=None))
        s.execute(update(BackfillSeries).where(BackfillSeries.backfill_id == bf["id"]).values(status="retrieving"))
    resumed = dict(json.loads(cli(node.env, "backfill", "--resume", str(bf["id"])).stdout.strip().splitlines()[-1]))
    assert resumed["status"] == "done" and resumed["series"] == {"retrieved": 1}, resumed
    jobs = _wait_jobs(node, uids)
    assert _instances(node, uids[3]) == 8, "a resumed retrieve stored an instance twice"
    assert len([j for j in node.jobs() if j["series_uid"] == uids[3]]) == 1

    # Everything again: nothing is retrieved or analysed a second time.
    again = _backfill(node, *EVERY_DATE, "--modality", "CT")
    assert again["series"] == {"skipped": 4} and again["brought"] == 0, again
    assert len(node.jobs()) == 4

    finished = cli(node.env, "backfill", "--resume", str(bf["id"]), check=False)
    assert finished.returncode == 2 and "finished" in finished.stderr


def test_backfill_from_dicomweb_qido_and_wado(tmp_path: Path, node: Node, pacs: Orthanc, studies: list[Path]) -> None:
    uids = [series_uids(f)[1] for f in studies]
    cli(node.env, "ae", "add-destination", "WEBPACS", "--kind", "dicomweb", "--url", pacs.dicomweb_url)
    node.start("serve", "--no-admin").wait_for_port(node.port, timeout=240)
    dry = cli(node.env, "backfill", "--source", "WEBPACS", *EVERY_DATE, "--modality", "CT", "--dry-run", "--json")
    assert sorted(r["series_uid"] for r in json.loads(dry.stdout)) == sorted(uids)
    out = cli(node.env, "backfill", "--source", "WEBPACS", "--accessions", _accessions(tmp_path, "ACC2", "ACC4"))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["method"] == "wado" and result["series"] == {"retrieved": 2}, result
    jobs = _wait_jobs(node, [uids[1], uids[3]])
    for uid in (uids[1], uids[3]):
        assert jobs[uid]["priority"] == "low"
        assert _instances(node, uid) == 8
    assert set(jobs) == {uids[1], uids[3]}
