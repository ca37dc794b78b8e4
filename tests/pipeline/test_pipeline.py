"""dicom_node.pipeline (analyse, export) in-process: a stored series is read with model.inference.io, the
predictor is replaced by a hand-made result (the model is beside the unit here; tests/e2e runs the
real one), the real output writers build the objects, the artefacts land under the results dir,
the job ends DONE with its exports, which are sent at once to a real pynetdicom SCP.

Covers: artefacts and Job.outputs/timings, byte-identical objects when a job runs twice, a job
without stored instances failing with the reason, export to a destination, a refusing
destination failing without retry, the Parametric Map left out of a series over
worker.parametric_map_max_slices (and built at the limit) with the other objects sent to a
destination that takes it. Does not cover Celery (tests/e2e) or the model itself
(tests/model).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from dicom_node.db import Database, upgrade
from dicom_node.db.models import Destination, Event, Export, Instance, Job, LocalAE, Series
from dicom_node.db.times import utcnow
from dicom_node.jobs.analyses import requeue
from dicom_node.jobs.queries import job_detail
from dicom_node.jobs.states import ExportStatus, JobStatus, SeriesStatus
from dicom_node.outputs.kinds import OUTPUT_KINDS
from dicom_node.pipeline.analyse import analyse
from dicom_node.pipeline.export import export_job
from dicom_node.pipeline.runtime import Runtime
from dicom_node.settings import Settings, load_settings
from dicom_node.storage.files import Storage
from dicom_node.storage.results import MAPS_FILE, RESULT_FILE
from model.contract.result import SeriesResult
from tests.harness.synthetic import MODEL, blob_result, make_test_phantom, write_series
from tests.harness.synthetic import Series as SyntheticSeries
from tests.sending.scp import Scp

pytestmark = pytest.mark.integration


class HandMadePredictor:
    """Stands in for model.inference.multiscale_cam's predictor: two blobs of "infection" in the lungs of the
    series written by :func:`store_series`."""

    def __init__(self) -> None:
        self.series: SyntheticSeries | None = None

    info = MODEL

    def predict(self, volume: Any) -> SeriesResult:
        assert self.series is not None and list(volume.sop_instance_uids) == self.series.sop_instance_uids
        return blob_result(self.series)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'node.sqlite3'}")


@pytest.fixture
def scp() -> Iterator[Scp]:
    server = Scp().start()
    yield server
    server.stop()


@contextlib.contextmanager
def hand_made_runtime(settings: Settings) -> Iterator[Runtime]:
    """A worker's runtime over ``settings`` (its database migrated) with the hand-made predictor."""
    upgrade(settings.effective_database_url)
    runtime = Runtime.create(settings, device="cpu", worker_name="test-worker", predictor=HandMadePredictor())
    try:
        yield runtime
    finally:
        runtime.db.dispose()


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    with hand_made_runtime(settings) as runtime:
        yield runtime


def store_series(rt: Runtime, tmp_path: Path, dest_port: int, dest_title: str = "PACS") -> int:
    """Write a phantom series into storage, index it, make a queued job for it, and have the
    hand-made predictor answer for it."""
    settings, db = rt.settings, rt.db
    written = write_series(make_test_phantom(slices=16, size=64), tmp_path / "scanner")
    files = written.paths
    storage = Storage(settings.storage_dir)
    with db.session() as s:
        ae = LocalAE(title="NODE", port=11112, quiet_seconds=5.0, max_wait_seconds=1800.0)
        ae.destinations = [Destination(title=dest_title, host="127.0.0.1", port=dest_port, outputs=list(OUTPUT_KINDS))]
        s.add(ae)
        s.flush()

        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        series = Series(
            series_uid=first.SeriesInstanceUID,
            study_uid=first.StudyInstanceUID,
            local_ae_id=ae.id,
            status=SeriesStatus.COMPLETE.value,
        )
        s.add(series)
        s.flush()
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rel = storage.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            target = storage.absolute(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            s.add(
                Instance(
                    series_id=series.id,
                    sop_instance_uid=ds.SOPInstanceUID,
                    sop_class_uid=ds.SOPClassUID,
                    transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                    path=rel,
                    size_bytes=target.stat().st_size,
                )
            )
        job = Job(series_id=series.id, status=JobStatus.QUEUED.value, queued_at=utcnow())
        s.add(job)
        s.flush()
        job_id = job.id
    predictor = rt.predictor()
    assert isinstance(predictor, HandMadePredictor)
    predictor.series = written
    return job_id


def job_row(db: Database, job_id: int) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_analyse_writes_artefacts_and_queues_exports(rt: Runtime, tmp_path: Path, scp: Scp) -> None:
    job_id = store_series(rt, tmp_path, scp.port)
    assert analyse(rt, job_id) == JobStatus.DONE.value
    job = job_row(rt.db, job_id)
    assert job.decision == "covid" and job.attempts == 1 and job.model_version == "1.2.0"
    kinds = sorted({o["kind"] for o in job.outputs})
    assert kinds == sorted(OUTPUT_KINDS)
    for o in job.outputs:
        path = rt.settings.results_dir / o["path"]
        assert path.is_file() and path.name == f"{o['sop_instance_uid']}.dcm"
    root = rt.settings.results_dir / str(job_id)
    assert json.loads((root / RESULT_FILE).read_text())["decision"] == "covid"
    maps = np.load(root / MAPS_FILE)
    assert maps["heatmap"].dtype == np.float16 and maps["region_labels"].max() == 2
    for key in ("queue_wait", "load", "inference", "encoding"):
        assert job.timings[key] >= 0.0
    with rt.db.session() as s:
        export = s.scalar(select(Export).where(Export.job_id == job_id))
        assert export is not None and export.status == ExportStatus.DONE.value  # sent right away
    assert export_job(rt, job_id) == {}  # the outbox's "export" message finds nothing due
    assert sorted(uid for uid, _ in scp.received) == sorted(o["sop_instance_uid"] for o in job.outputs)
    assert job_row(rt.db, job_id).timings["export"] > 0


def test_a_job_run_twice_writes_the_same_bytes(rt: Runtime, tmp_path: Path, scp: Scp) -> None:
    job_id = store_series(rt, tmp_path, scp.port)
    assert analyse(rt, job_id) == JobStatus.DONE.value
    first = {
        o["sop_instance_uid"]: (rt.settings.results_dir / o["path"]).read_bytes()
        for o in job_row(rt.db, job_id).outputs
    }
    requeue(rt.db, job_id)
    assert analyse(rt, job_id) == JobStatus.DONE.value
    job = job_row(rt.db, job_id)
    second = {o["sop_instance_uid"]: (rt.settings.results_dir / o["path"]).read_bytes() for o in job.outputs}
    assert job.attempts == 2
    assert first == second
    assert not list((rt.settings.results_dir / str(job_id)).glob("dicom.*"))  # no staging left


def test_a_job_without_instances_fails_with_the_reason(rt: Runtime, tmp_path: Path, scp: Scp) -> None:
    job_id = store_series(rt, tmp_path, scp.port)
    with rt.db.session() as s:
        for inst in s.scalars(select(Instance)):
            s.delete(inst)
    assert analyse(rt, job_id) == "failed"
    job = job_row(rt.db, job_id)
    assert job.status == JobStatus.FAILED.value and "no stored instance" in job.reason


def test_a_refusing_destination_fails_once(rt: Runtime, tmp_path: Path, scp: Scp) -> None:
    job_id = store_series(rt, tmp_path, scp.port, dest_title="WRONGAET")
    assert analyse(rt, job_id) == JobStatus.DONE.value
    assert export_job(rt, job_id) == {}  # failed at once, nothing due: not retried
    with rt.db.session() as s:
        export = s.scalar(select(Export).where(Export.job_id == job_id))
        assert export is not None and export.attempts == 1 and "rejected" in export.last_error
    assert scp.associations == 1  # one association request, rejected, never repeated


@pytest.mark.parametrize("limit", [15, 16])
def test_the_parametric_map_is_left_out_over_the_slice_limit(
    tmp_path: Path, scp: Scp, limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'node.sqlite3'}",
        worker={"parametric_map_max_slices": limit},
    )
    with hand_made_runtime(settings) as rt:
        job_id = store_series(rt, tmp_path, scp.port)  # 16 slices, to a destination that takes every kind
        with caplog.at_level("INFO", logger="dicom_node.pipeline.analyse"):
            assert analyse(rt, job_id) == JobStatus.DONE.value
        job = job_row(rt.db, job_id)
        kinds = {o["kind"] for o in job.outputs}
        detail = job_detail(rt.db, job_id)
        with rt.db.session() as s:
            export = s.scalar(select(Export).where(Export.job_id == job_id))
            assert export is not None and "pm" in export.outputs
            status, attempts, error = export.status, export.attempts, export.last_error
            events = [e.message for e in s.scalars(select(Event).where(Event.category == "job"))]
    why = "parametric map left out: 16 slices, over worker.parametric_map_max_slices = 15"
    result = job.result or {}
    logged = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    if limit == 16:  # at the limit: built and sent as before
        assert kinds == set(OUTPUT_KINDS) and "left_out" not in result
        assert detail["left_out"] == {} and logged == [] and events == []
    else:
        assert kinds == set(OUTPUT_KINDS) - {"pm"}
        assert not (rt.settings.results_dir / str(job_id) / "dicom" / "pm").exists()
        assert result["left_out"]["pm"].startswith(why)
        assert detail["left_out"] == {"pm": result["left_out"]["pm"]}
        assert logged == events == [f"job {job_id}: {result['left_out']['pm']}"]
    # The destination takes pm: it gets every object built, once, and the export is done.
    assert (status, attempts, error) == (ExportStatus.DONE.value, 1, "")
    assert sorted(uid for uid, _ in scp.received) == sorted(o["sop_instance_uid"] for o in job.outputs)
