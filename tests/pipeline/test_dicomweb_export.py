"""A job's results to a DICOMweb destination through the export state machine (dicom_node.jobs.exports
and dicom_node.pipeline.export), Orthanc with its DICOMweb plugin as the PACS, read back over its REST
API: the real output objects of a job (the hand-made predictor of test_pipeline), the destination's
output choice, a service away (retrying with backoff, then sent), a re-export (the same instances
again: the PACS holds each once), refused credentials (failed at once, not retried), and an
export whose DICOMweb destination was removed (failed: its URL and credentials are gone).

Does not cover Celery (tests/e2e) or the model (tests/model).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from dicom_node.configuration import DestinationPatch, parse, update_destination
from dicom_node.db.models import Destination, Export
from dicom_node.db.times import as_utc, utcnow
from dicom_node.jobs.exports import reexport
from dicom_node.jobs.states import ExportStatus, JobStatus
from dicom_node.pipeline.analyse import analyse
from dicom_node.pipeline.export import export_job
from dicom_node.pipeline.runtime import Runtime
from dicom_node.settings import load_settings
from tests.harness.peers import Orthanc, free_port
from tests.pipeline.test_pipeline import hand_made_runtime, job_row, store_series

pytestmark = pytest.mark.integration


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    settings = load_settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'node.sqlite3'}")
    with hand_made_runtime(settings) as runtime:
        yield runtime


def make_dicomweb(rt: Runtime, url: str, **fields: object) -> None:
    """Turn the job's destination (made by store_series as a DIMSE one) into a DICOMweb one."""
    with rt.db.session() as s:
        row = s.scalar(select(Destination))
        assert row is not None
        update_destination(s, row, parse(DestinationPatch, {"kind": "dicomweb", "url": url, **fields}))


def the_export(rt: Runtime, job_id: int) -> Export:
    with rt.db.session() as s:
        row = s.scalar(select(Export).where(Export.job_id == job_id))
        assert row is not None
        return row


def test_a_job_reaches_a_dicomweb_pacs_once_after_a_retry_and_a_reexport(rt: Runtime, tmp_path: Path) -> None:
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True)  # not started yet: the service is away
    job_id = store_series(rt, tmp_path, dest_port=1)
    make_dicomweb(rt, pacs.dicomweb_url, outputs=["sr", "seg", "kos"])
    assert analyse(rt, job_id) == JobStatus.DONE.value
    export = the_export(rt, job_id)
    assert export.status == ExportStatus.RETRYING.value and export.attempts == 1, export.last_error
    assert "ConnectError" in export.last_error and export.next_attempt_at is not None
    assert as_utc(export.next_attempt_at) > utcnow()
    assert export_job(rt, job_id) == {}  # not due before its backoff

    pacs.start()
    try:
        with rt.db.session() as s:  # the backoff has passed
            row = s.get(Export, export.id)
            assert row is not None
            row.next_attempt_at = utcnow() - dt.timedelta(seconds=1)
        assert export_job(rt, job_id) == {export.id: ExportStatus.DONE.value}
        outputs = job_row(rt.db, job_id).outputs
        sent = sorted(o["sop_instance_uid"] for o in outputs if o["kind"] in ("sr", "seg", "kos"))
        held = sorted(pacs.instance_tags(i)["SOPInstanceUID"] for i in pacs.instances())
        assert held == sent and len(sent) >= 3, "the destination's outputs, each once"
        assert the_export(rt, job_id).objects_sent == len(sent)

        # Sent again (an admin's re-export): the same instances, still once each in the PACS.
        assert reexport(rt.db, job_id, default_outputs=["sr"]) == [export.id]
        assert export_job(rt, job_id) == {export.id: ExportStatus.DONE.value}
        assert sorted(pacs.instance_tags(i)["SOPInstanceUID"] for i in pacs.instances()) == sent
    finally:
        pacs.stop()


def test_refused_credentials_fail_the_export_at_once(rt: Runtime, tmp_path: Path) -> None:
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True, users={"node": "right-password"}).start()
    try:
        job_id = store_series(rt, tmp_path, dest_port=1)
        make_dicomweb(rt, pacs.dicomweb_url, auth="basic", username="node", password="wrong-password")
        assert analyse(rt, job_id) == JobStatus.DONE.value
        export = the_export(rt, job_id)
        assert export.status == ExportStatus.FAILED.value and export.attempts == 1
        assert export.last_error.startswith("refused (not retried): ") and "HTTP 401" in export.last_error
        assert export_job(rt, job_id) == {}
        assert pacs.instances() == []
    finally:
        pacs.stop()


def test_an_export_whose_dicomweb_destination_was_removed_is_not_sent(rt: Runtime, tmp_path: Path) -> None:
    job_id = store_series(rt, tmp_path, dest_port=1)
    make_dicomweb(rt, f"http://127.0.0.1:{free_port()}/dicom-web")  # nothing listens: retrying
    assert analyse(rt, job_id) == JobStatus.DONE.value
    export = the_export(rt, job_id)
    assert (export.status, export.kind) == (ExportStatus.RETRYING.value, "dicomweb")
    with rt.db.session() as s:
        row = s.get(Export, export.id)
        assert row is not None
        row.next_attempt_at = utcnow() - dt.timedelta(seconds=1)
        s.delete(s.scalars(select(Destination)).one())
    assert export_job(rt, job_id) == {export.id: "skipped"}
    export = the_export(rt, job_id)
    assert export.status == ExportStatus.FAILED.value and export.attempts == 1
    assert export.last_error == "not sent: the DICOMweb destination was removed"
