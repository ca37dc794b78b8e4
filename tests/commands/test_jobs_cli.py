"""``dicom-node jobs list|retry|export`` through the command's main(), on a SQLite database with
rows made directly; the argument parsing of ``worker`` and ``up``.

Not covered: running a worker or ``up`` (tests/e2e).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.cli import build_parser, main
from dicom_node.db import Database, upgrade
from dicom_node.db.models import Destination, Export, Job, LocalAE, OutboxMessage, Series
from dicom_node.jobs.states import ExportStatus, JobStatus, SeriesStatus
from dicom_node.settings import load_settings


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path / "data"))
    url = load_settings().effective_database_url
    upgrade(url)
    database = Database(url)
    with database.session() as s:
        ae = LocalAE(title="NODE", port=11112, quiet_seconds=5.0, max_wait_seconds=1800.0)
        ae.destinations = [Destination(title="PACS", host="127.0.0.1", port=104, outputs=["sr"])]
        s.add(ae)
        s.flush()
        series = Series(series_uid="1.2.3.4", study_uid="1.2.3", local_ae_id=ae.id, status=SeriesStatus.COMPLETE.value)
        s.add(series)
        s.flush()
        job = Job(
            series_id=series.id,
            status=JobStatus.DONE.value,
            decision="covid",
            attempts=1,
            result={"probabilities": {"covid": 0.9, "cap": 0.05, "normal": 0.05}},
        )
        s.add(job)
        s.flush()
        s.add(
            Export(
                job_id=job.id,
                destination_id=1,
                destination_key="dest:1",
                title="PACS",
                host="127.0.0.1",
                port=104,
                outputs=["sr"],
                status=ExportStatus.FAILED.value,
                attempts=1,
                last_error="refused",
            )
        )
    return database


def test_jobs_list_json(db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    row = rows[0]
    assert (row["status"], row["decision"], row["probabilities"]["covid"]) == ("done", "covid", 0.9)
    assert row["exports"][0]["destination"] == "PACS"
    assert (row["exports"][0]["status"], row["exports"][0]["attempts"], row["exports"][0]["last_error"]) == (
        "failed",
        1,
        "refused",
    )
    assert main(["jobs", "list"]) == 0
    assert "Not for clinical use." in capsys.readouterr().out


def test_jobs_export_resets_the_failed_export(db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "export", "1", "--destination", "PACS"]) == 0
    assert json.loads(capsys.readouterr().out)["exports"] == [1]
    with db.session() as s:
        export = s.get(Export, 1)
        assert export is not None and (export.status, export.attempts) == ("pending", 0)
        assert s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "export")) is not None
    assert main(["jobs", "export", "1", "--destination", "NOPE"]) == 2
    assert "no destination" in capsys.readouterr().err


def test_jobs_retry_requeues_a_finished_job_only(db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "retry", "1"]) == 0
    with db.session() as s:
        job = s.get(Job, 1)
        assert job is not None and job.status == JobStatus.PENDING.value
    assert main(["jobs", "retry", "1"]) == 2  # pending now: not twice
    assert "--force" in capsys.readouterr().err
    assert main(["jobs", "retry", "1", "--force"]) == 0
    assert main(["jobs", "retry", "99"]) == 2


def test_worker_and_up_options() -> None:
    args = build_parser().parse_args(["worker", "--concurrency", "2", "--device", "cpu", "--pool", "prefork"])
    assert (args.concurrency, args.device, args.pool) == (2, "cpu", "prefork")
    args = build_parser().parse_args(["up", "--no-admin", "--port", "11113"])
    assert (args.no_admin, args.port, args.ae_title) == (True, 11113, "COVIDNODE")
