"""The index, series completion, the outbox relay and index recovery, on SQLite and PostgreSQL.

Covers: idempotent re-sends, series counters, completion by quiet period and by maximum wait,
filters with reasons, the job + outbox written with the completion, a late instance re-opening a
series and superseding the job that had not started (never two waiting), the relay marking jobs
queued only after the dispatcher took them, recovery of lost index rows from the files. The
network side is in tests/integration.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import func, select, update

from dicom_node.db import Database
from dicom_node.db.models import Instance, Job, LocalAE, OutboxMessage, Series
from dicom_node.jobs.analyses import requeue
from dicom_node.jobs.completion import Completion
from dicom_node.jobs.outbox import OutboxRelay
from dicom_node.jobs.states import JobStatus, SeriesStatus
from dicom_node.settings import CompletionSettings
from dicom_node.storage.files import Storage
from dicom_node.storage.index import Index, ReceivedInstance
from dicom_node.storage.recovery import clean_stop, recover_index, unclean_start
from tests.pydicom_files import pydicom_file

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def item(ae_id: int | None, n: int, series: str = "1.2.3.1", **kw: Any) -> ReceivedInstance:
    values: dict[str, Any] = dict(
        local_ae_id=ae_id,
        calling_ae="SCANNER",
        calling_host="127.0.0.1",
        study_uid="1.2.3",
        series_uid=series,
        sop_instance_uid=f"{series}.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"1.2.3/{series}/{series}.{n}.dcm",
        size_bytes=1000,
        modality="CT",
        image_type="ORIGINAL\\PRIMARY\\AXIAL",
    )
    values.update(kw)
    return ReceivedInstance(**values)


def series_row(db: Database, uid: str = "1.2.3.1") -> Series:
    with db.session() as s:
        return s.scalars(select(Series).where(Series.series_uid == uid)).one()


def jobs(db: Database) -> list[Job]:
    with db.session() as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


def test_record_counts_and_is_idempotent(db: Database, ae_id: int) -> None:
    index = Index(db)
    assert index.record(item(ae_id, 1), T0)
    assert index.record(item(ae_id, 2), T0)
    assert not index.record(item(ae_id, 2), T0)
    row = series_row(db)
    assert (row.instances, row.frames, row.status, row.calling_ae) == (2, 2, "receiving", "SCANNER")
    assert index.has_instance("1.2.3.1.2") and not index.has_instance("1.2.3.1.9")


def test_completion_after_quiet_period_writes_job_and_outbox(db: Database, ae_id: int) -> None:
    index, completion = Index(db), Completion(db, CompletionSettings())
    index.record(item(ae_id, 1), T0)
    index.record(item(ae_id, 2), T0 + dt.timedelta(seconds=3))
    assert completion.run_once(T0 + dt.timedelta(seconds=7)) == []  # 4 s quiet, 5 needed
    done = completion.run_once(T0 + dt.timedelta(seconds=8.5))
    assert len(done) == 1 and done[0].analysed and done[0].job_id is not None
    assert series_row(db).status == SeriesStatus.COMPLETE.value
    with db.session() as s:
        assert (
            s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.job_id == done[0].job_id)) == 1
        )
    assert completion.run_once(T0 + dt.timedelta(seconds=30)) == []


def test_maximum_wait_completes_a_series_that_never_goes_quiet(db: Database, ae_id: int) -> None:
    index, completion = Index(db), Completion(db, CompletionSettings())
    for k in range(0, 70, 3):
        index.record(item(ae_id, k), T0 + dt.timedelta(seconds=k))
        if k < 60:
            assert completion.run_once(T0 + dt.timedelta(seconds=k + 1)) == []
    assert len(completion.run_once(T0 + dt.timedelta(seconds=70))) == 1


def test_filters_leave_a_series_stored_with_the_reason(db: Database, ae_id: int) -> None:
    with db.session() as s:
        s.execute(update(LocalAE).where(LocalAE.id == ae_id).values(filters={"min_slices": 3}))
    index = Index(db)
    index.record(item(ae_id, 1), T0)
    index.record(item(ae_id, 1, series="1.2.3.2", modality="MR"), T0)
    Completion(db, CompletionSettings()).run_once(T0 + dt.timedelta(seconds=10))
    assert series_row(db).status == SeriesStatus.NOT_ANALYSED.value
    assert "fewer than the minimum of 3" in series_row(db).reason
    assert "modality MR" in series_row(db, "1.2.3.2").reason
    assert jobs(db) == []


def test_late_instance_reopens_and_leads_to_one_new_job(db: Database, ae_id: int) -> None:
    index, completion = Index(db), Completion(db, CompletionSettings())
    index.record(item(ae_id, 1), T0)
    first = completion.run_once(T0 + dt.timedelta(seconds=6))[0].job_id
    # The late instance arrives before the first job started: it is superseded, not duplicated.
    index.record(item(ae_id, 2), T0 + dt.timedelta(seconds=7))
    row = series_row(db)
    assert (row.status, row.generation, row.instances) == ("receiving", 1, 2)
    assert [j.status for j in jobs(db)] == [JobStatus.SUPERSEDED.value]
    second = completion.run_once(T0 + dt.timedelta(seconds=13))[0].job_id
    assert second != first
    assert [j.status for j in jobs(db)] == [JobStatus.SUPERSEDED.value, JobStatus.PENDING.value]
    # A re-sent known instance does not re-open anything.
    assert not index.record(item(ae_id, 2), T0 + dt.timedelta(seconds=20))
    assert series_row(db).status == SeriesStatus.COMPLETE.value


def test_running_job_is_not_superseded(db: Database, ae_id: int) -> None:
    index, completion = Index(db), Completion(db, CompletionSettings())
    index.record(item(ae_id, 1), T0)
    job_id = completion.run_once(T0 + dt.timedelta(seconds=6))[0].job_id
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING.value))
    index.record(item(ae_id, 2), T0 + dt.timedelta(seconds=7))
    assert jobs(db)[0].status == JobStatus.RUNNING.value
    completion.run_once(T0 + dt.timedelta(seconds=13))
    assert [j.status for j in jobs(db)] == [JobStatus.RUNNING.value, JobStatus.PENDING.value]


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    def dispatch(self, topic: str, job_id: int) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.calls.append((topic, job_id))

    def housekeeping(self) -> None:
        pass


def test_relay_marks_queued_only_after_dispatch(db: Database, ae_id: int) -> None:
    Index(db).record(item(ae_id, 1), T0)
    job_id = Completion(db, CompletionSettings()).run_once(T0 + dt.timedelta(seconds=6))[0].job_id
    assert job_id is not None
    down = Recorder(fail=True)
    assert OutboxRelay(db, down).relay_once() == 0
    assert jobs(db)[0].status == JobStatus.PENDING.value
    up = Recorder()
    assert OutboxRelay(db, up).relay_once() == 1
    assert up.calls == [("analyse", job_id)]
    assert jobs(db)[0].status == JobStatus.QUEUED.value
    assert OutboxRelay(db, up).relay_once() == 0
    requeue(db, job_id, force=True)  # a queued job: only a forced retry queues it again
    assert OutboxRelay(db, up).relay_once() == 1
    assert up.calls[-1] == ("analyse", job_id)


def test_recovery_indexes_files_the_index_lost(db: Database, ae_id: int, tmp_path: Path) -> None:
    storage = Storage(tmp_path / "storage")
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    rel = storage.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    raw = Path(pydicom_file("CT_small.dcm")).read_bytes()
    # The dataset bytes after the file meta of the test file.
    offset = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    storage.write(
        rel,
        raw[offset:],
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        source_ae_title="SCANNER",
        series_record={"local_ae_id": ae_id, "calling_ae": "SCANNER", "calling_host": "10.0.0.5"},
    )
    assert recover_index(storage, db) == 1
    row = series_row(db, ds.SeriesInstanceUID)
    assert (row.instances, row.local_ae_id, row.calling_host) == (1, ae_id, "10.0.0.5")
    with db.session() as s:
        assert s.scalar(select(Instance.path).where(Instance.sop_instance_uid == ds.SOPInstanceUID)) == rel
    assert recover_index(storage, db) == 0
    assert not unclean_start(tmp_path)
    assert unclean_start(tmp_path)  # never stopped cleanly
    clean_stop(tmp_path)
    assert not unclean_start(tmp_path)


def test_after_a_restart_every_open_series_waits_a_whole_quiet_period_again(db: Database, ae_id: int) -> None:
    # The node died at T0 + 1 while a series arrived and came back at T0 + 30; the
    # downtime is not a quiet period (the sender comes back to the listeners first).
    index = Index(db)
    index.record(item(ae_id, 1), T0)
    index.record(item(ae_id, 2), T0 + dt.timedelta(seconds=1))
    completion = Completion(db, CompletionSettings())
    completion.hold()  # serve: until its listeners report their ports bound
    assert completion.run_once(T0 + dt.timedelta(seconds=30)) == []
    completion.resume(T0 + dt.timedelta(seconds=30))
    assert completion.run_once(T0 + dt.timedelta(seconds=34)) == []
    # The sender resumed: the quiet period counts from its last instance.
    index.record(item(ae_id, 3), T0 + dt.timedelta(seconds=33))
    assert completion.run_once(T0 + dt.timedelta(seconds=37)) == []
    done = completion.run_once(T0 + dt.timedelta(seconds=38))
    assert [d.series_uid for d in done] == ["1.2.3.1"] and series_row(db).instances == 3
    assert len(jobs(db)) == 1


def test_after_a_restart_the_maximum_wait_also_waits_one_quiet_period(db: Database, ae_id: int) -> None:
    Index(db).record(item(ae_id, 1), T0)
    completion = Completion(db, CompletionSettings(), resumed_at=T0 + dt.timedelta(seconds=3600))
    assert completion.run_once(T0 + dt.timedelta(seconds=3602)) == []  # opened > max wait ago, but just resumed
    assert len(completion.run_once(T0 + dt.timedelta(seconds=3605))) == 1
