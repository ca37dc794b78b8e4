"""Retention (dicom_node.storage.retention) on a real database, SQLite (the fast tier) and
PostgreSQL: which series are finished (every state of a series, its jobs and its exports), the
purge itself (files, rows, event, audit entry, counters), a series that stops being finished
between the choice and the purge, the days per node and per local AE, the high water mark and
make_room (with the disk's figures given: the unit's neighbour), an interrupted purge finished,
a purged series refused a retry and started again when it is sent again, results and old rows
removed. The disk filled for real, with the listener and serve, is tests/reliability/test_disk_full.py.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from dicom_node.db import Database
from dicom_node.db.models import AuditEntry, Event, Export, Instance, Job, LocalAE, Series
from dicom_node.db.times import utcnow
from dicom_node.jobs import analyses
from dicom_node.jobs.states import ExportStatus, JobStatus, SeriesStatus
from dicom_node.settings import RetentionSettings, Settings
from dicom_node.storage.files import SERIES_RECORD, Storage
from dicom_node.storage.index import Index, ReceivedInstance
from dicom_node.storage.retention import (
    AUDIT_PRUNED,
    BYTES_PURGED,
    EVENTS_PRUNED,
    RESULTS_PURGED,
    SERIES_PURGED,
    Disk,
    Retention,
    counters,
)

MB = 2**20
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", retention=RetentionSettings(images_days=30, results_days=90))


class GivenDisk(Retention):
    """Retention on a disk of given figures: purging a series frees its size."""

    def __init__(self, *args: Any, total: int, free: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.total, self.free = total, free

    def disk(self) -> Disk:
        return Disk(total=self.total, free=self.free)

    def purge(self, item: Any, why: str) -> int:
        freed = super().purge(item, why)
        self.free += freed
        return freed


class Node:
    """A local AE and series made by hand in every state, with their files."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db, self.settings = db, settings
        self.storage = Storage(settings.storage_dir)
        self.count = 0
        with db.session() as s:
            self.ae = LocalAE(title="NODE", port=11112, quiet_seconds=5.0, max_wait_seconds=1800.0)
            self.short = LocalAE(
                title="SHORT", port=11113, quiet_seconds=5.0, max_wait_seconds=1800.0, keep_images_days=1.0
            )
            s.add_all([self.ae, self.short])

    def series(
        self,
        status: SeriesStatus,
        jobs: tuple[JobStatus, ...] = (),
        exports: tuple[ExportStatus, ...] = (),
        *,
        finished_days_ago: float = 40.0,
        ae: LocalAE | None = None,
        instances: int = 2,
        mb_each: int = 1,
    ) -> int:
        """A series finished ``finished_days_ago`` (its completion, its jobs' and exports' ends)."""
        self.count += 1
        uid, study = f"2.25.{1000 + self.count}", f"2.25.{5000 + self.count}"
        when = NOW - dt.timedelta(days=finished_days_ago)
        with self.db.session() as s:
            row = Series(
                series_uid=uid,
                study_uid=study,
                local_ae_id=(ae or self.ae).id,
                status=status.value,
                completed_at=None if status == SeriesStatus.RECEIVING else when,
                instances=instances,
                size_bytes=instances * mb_each * MB,
                first_received_at=when,
            )
            s.add(row)
            s.flush()
            for n in range(instances):
                relative = self.storage.relative_path(study, uid, f"{uid}.{n}")
                self.storage.write(
                    relative,
                    b"\0" * 16,  # the sizes are the database's (series.size_bytes)
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    sop_instance_uid=f"{uid}.{n}",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    series_record={"local_ae": "NODE"},
                )
                s.add(
                    Instance(
                        series_id=row.id,
                        sop_instance_uid=f"{uid}.{n}",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax_uid="1.2.840.10008.1.2.1",
                        path=relative,
                        size_bytes=mb_each * MB,
                    )
                )
            for job_status in jobs:
                job = Job(series_id=row.id, status=job_status.value, finished_at=when if job_status in _ENDED else None)
                s.add(job)
                s.flush()
                for n, export_status in enumerate(exports):
                    s.add(
                        Export(
                            job_id=job.id,
                            destination_key=f"dest:{n}",
                            title=f"PACS{n}",
                            host="127.0.0.1",
                            port=104,
                            status=export_status.value,
                            finished_at=when if export_status in (ExportStatus.DONE, ExportStatus.FAILED) else None,
                        )
                    )
            return row.id

    def files(self, series_id: int) -> list[Path]:
        with self.db.reader() as conn:
            uid, study = conn.execute(select(Series.series_uid, Series.study_uid).where(Series.id == series_id)).one()
        folder = self.storage.root / study / uid
        return sorted(folder.glob("*.dcm")) if folder.is_dir() else []


_ENDED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.SUPERSEDED)


@pytest.fixture
def node(db: Database, settings: Settings) -> Node:
    return Node(db, settings)


def test_only_finished_series_are_candidates_oldest_first(node: Node, db: Database, settings: Settings) -> None:
    done = node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.DONE,), finished_days_ago=50)
    failed_export = node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.FAILED,), finished_days_ago=45)
    failed_job = node.series(SeriesStatus.COMPLETE, (JobStatus.FAILED,), finished_days_ago=40)
    not_analysed = node.series(SeriesStatus.NOT_ANALYSED, finished_days_ago=60)
    superseded_then_done = node.series(
        SeriesStatus.COMPLETE, (JobStatus.SUPERSEDED, JobStatus.DONE), (ExportStatus.DONE,), finished_days_ago=35
    )
    unfinished = [
        node.series(SeriesStatus.RECEIVING),
        node.series(SeriesStatus.COMPLETE, (JobStatus.PENDING,)),
        node.series(SeriesStatus.COMPLETE, (JobStatus.QUEUED,)),
        node.series(SeriesStatus.COMPLETE, (JobStatus.RUNNING,)),
        node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.PENDING,)),
        node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.SENDING,)),
        node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.DONE, ExportStatus.RETRYING)),
        node.series(SeriesStatus.COMPLETE, (JobStatus.DONE, JobStatus.QUEUED), (ExportStatus.DONE,)),
        node.series(SeriesStatus.COMPLETE),  # no job (never written so): not finished
    ]
    got = [f.series_id for f in Retention(db, settings).finished()]
    assert got == [not_analysed, done, failed_export, failed_job, superseded_then_done]
    assert not set(got) & set(unfinished)


def test_a_purge_removes_files_and_rows_and_records_it(node: Node, db: Database, settings: Settings) -> None:
    sid = node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.DONE,))
    folder = node.files(sid)[0].parent
    retention = Retention(db, settings, node.storage, actor="test")
    (item,) = retention.finished()
    assert retention.purge(item, "because") == 2 * MB
    assert node.files(sid) == [] and not folder.exists() and not folder.parent.exists()
    with db.session() as s:
        series = s.get(Series, sid)
        assert series is not None and series.purged_at is not None
        assert series.instances == 2 and series.size_bytes == 2 * MB  # what was received stays known
        assert s.scalar(select(func.count()).select_from(Instance).where(Instance.series_id == sid)) == 0
        event = s.scalars(select(Event).where(Event.category == "retention")).one()
        assert series.series_uid in event.message and "because" in event.message
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "series.purge")).one()
        assert entry.target == series.series_uid and entry.actor == "retention (test)"
    with db.reader() as conn:
        assert counters(conn)[SERIES_PURGED] == 1 and counters(conn)[BYTES_PURGED] == 2 * MB
    assert retention.finished() == [] and retention.purge(item, "again") == 0


def test_a_series_that_is_no_longer_finished_is_not_purged(node: Node, db: Database, settings: Settings) -> None:
    sid = node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.DONE,))
    retention = Retention(db, settings)
    (item,) = retention.finished()
    with db.reader() as conn:
        job_id = conn.scalar(select(Job.id).where(Job.series_id == sid))
    assert job_id is not None
    analyses.requeue(db, job_id, reason="an admin asked")  # between the choice and the purge
    assert retention.purge(item, "too late") == 0
    assert len(node.files(sid)) == 2


def test_the_days_of_the_node_and_of_a_local_ae(node: Node, db: Database, settings: Settings) -> None:
    old = node.series(SeriesStatus.NOT_ANALYSED, finished_days_ago=31)
    recent = node.series(SeriesStatus.NOT_ANALYSED, finished_days_ago=29)
    short_old = node.series(SeriesStatus.NOT_ANALYSED, finished_days_ago=2, ae=node.short)
    short_new = node.series(SeriesStatus.NOT_ANALYSED, finished_days_ago=0.5, ae=node.short)
    retention = GivenDisk(db, settings, node.storage, total=1000 * MB, free=900 * MB)
    plan = retention.plan(NOW)
    assert [i.series_id for i, _ in plan.purged] == [old, short_old]
    assert all(len(node.files(s)) == 2 for s in (old, short_old))  # a dry run purges nothing
    report = retention.run_once(NOW)
    assert [i.series_id for i, _ in report.purged] == [old, short_old]
    assert "kept 30 day(s)" in report.purged[0][1] and "kept 1 day(s)" in report.purged[1][1]
    assert node.files(old) == node.files(short_old) == []
    assert len(node.files(recent)) == len(node.files(short_new)) == 2


def test_over_the_high_water_mark_the_oldest_finished_go_down_to_the_low_water_mark(
    node: Node, db: Database, settings: Settings
) -> None:
    settings.retention.images_days = None  # nothing is due by age
    oldest = [node.series(SeriesStatus.NOT_ANALYSED, finished_days_ago=d, instances=10) for d in (9, 8, 7, 6)]
    pending = node.series(SeriesStatus.COMPLETE, (JobStatus.PENDING,), finished_days_ago=20, instances=10)
    # 100 MB disk, 90 % used (high water 85 %, low water 75 %): 15 MB to free, two series of 10 MB.
    retention = GivenDisk(db, settings, node.storage, total=100 * MB, free=10 * MB)
    report = retention.run_once(NOW)
    assert [i.series_id for i, _ in report.purged] == oldest[:2]
    assert "over the high water mark of 85 %" in report.purged[0][1]
    assert retention.free == 30 * MB
    assert len(node.files(pending)) == 10 and all(len(node.files(s)) == 10 for s in oldest[2:])
    assert retention.run_once(NOW).purged == []  # under the high water mark now


def test_make_room_purges_only_finished_series(node: Node, db: Database, settings: Settings) -> None:
    finished = node.series(SeriesStatus.NOT_ANALYSED, instances=4)
    running = node.series(SeriesStatus.COMPLETE, (JobStatus.RUNNING,), instances=4)
    retention = GivenDisk(db, settings, node.storage, total=100 * MB, free=1 * MB)
    assert retention.make_room(20 * MB) == 4 * MB  # all it could: the running job's series stays
    assert node.files(finished) == [] and len(node.files(running)) == 4
    assert retention.make_room(20 * MB) == 0


def test_an_interrupted_purge_is_finished(node: Node, db: Database, settings: Settings) -> None:
    sid = node.series(SeriesStatus.NOT_ANALYSED)
    with db.session() as s:
        series = s.get(Series, sid)
        assert series is not None
        series.purged_at = utcnow()  # marked, then the process died before the files went
    node.files(sid)[0].unlink()
    assert Retention(db, settings).finish_interrupted() == 1
    assert node.files(sid) == []
    with db.reader() as conn:
        assert conn.scalar(select(func.count()).select_from(Instance).where(Instance.series_id == sid)) == 0


def test_a_purged_series_is_not_retried_and_starts_again_when_sent_again(
    node: Node, db: Database, settings: Settings
) -> None:
    sid = node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.DONE,))
    retention = Retention(db, settings)
    (item,) = retention.finished()
    retention.purge(item, "old")
    with db.reader() as conn:
        job_id = conn.scalar(select(Job.id).where(Job.series_id == sid))
    assert job_id is not None
    with pytest.raises(analyses.ImagesPurged, match="send the series again"):
        analyses.requeue(db, job_id)
    Index(db).record(
        ReceivedInstance(
            local_ae_id=node.ae.id,
            calling_ae="CT",
            calling_host="10.0.0.1",
            study_uid=item.study_uid,
            series_uid=item.series_uid,
            sop_instance_uid=f"{item.series_uid}.9",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=f"{item.study_uid}/{item.series_uid}/{item.series_uid}.9.dcm",
            size_bytes=3 * MB,
        )
    )
    with db.session() as s:
        series = s.get(Series, sid)
        assert series is not None
        assert (series.status, series.purged_at, series.instances, series.size_bytes) == (
            SeriesStatus.RECEIVING.value,
            None,
            1,
            3 * MB,
        )


def test_old_results_events_and_audit_entries_go_and_are_counted(node: Node, db: Database, settings: Settings) -> None:
    old = node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.DONE,), finished_days_ago=100)
    new = node.series(SeriesStatus.COMPLETE, (JobStatus.DONE,), (ExportStatus.DONE,), finished_days_ago=10)
    with db.reader() as conn:
        jobs = dict(conn.execute(select(Job.series_id, Job.id)).all())
    for series_id in (old, new):
        folder = settings.results_dir / str(jobs[series_id]) / "dicom"
        folder.mkdir(parents=True)
        (folder / "x.dcm").write_bytes(b"x")
    with db.session() as s:
        s.add_all(
            [
                Event(category="x", message="old", at=NOW - dt.timedelta(days=100)),
                Event(category="x", message="new", at=NOW - dt.timedelta(days=1)),
                AuditEntry(actor="a", action="x.y", at=NOW - dt.timedelta(days=800)),
                AuditEntry(actor="a", action="x.y", at=NOW - dt.timedelta(days=700)),
            ]
        )
    report = Retention(db, settings).run_once(NOW)
    assert report.results_purged == 1 and report.events_pruned == 1 and report.audit_pruned == 1
    assert not (settings.results_dir / str(jobs[old])).exists()
    assert (settings.results_dir / str(jobs[new])).is_dir()
    with db.reader() as conn:
        counts = counters(conn)
        assert conn.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "x.y")) == 1
    assert (counts[RESULTS_PURGED], counts[EVENTS_PRUNED], counts[AUDIT_PRUNED]) == (1, 1, 1)


def test_usage_says_the_days_left_at_the_receiving_rate(node: Node, db: Database, settings: Settings) -> None:
    for days in (1, 2, 3):
        node.series(SeriesStatus.RECEIVING, finished_days_ago=days, instances=7)  # 7 MB on each of 3 days
    disk = GivenDisk(db, settings, node.storage, total=10_000 * MB, free=1024 * MB + 70 * MB)
    young = disk.usage(NOW)  # a node 3 days old: its rate since its first series
    assert young.bytes_per_day == pytest.approx(7 * MB)
    assert young.days_left == pytest.approx(10)  # 70 MB down to listener.min_free_disk_mb (1024 MB)
    node.series(SeriesStatus.RECEIVING, finished_days_ago=20, mb_each=50)
    usage = disk.usage(NOW)  # older than a week: the last 7 days
    assert usage.bytes_per_day == pytest.approx(3 * MB)
    assert usage.days_left == pytest.approx(70 / 3)


def test_a_folder_removed_by_retention_is_made_again_by_the_writer(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    relative = storage.relative_path("1.2", "1.2.3", "1.2.3.4")
    options: dict[str, Any] = {
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "sop_instance_uid": "1.2.3.4",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "series_record": {"local_ae": "NODE"},
    }
    stored = storage.write(relative, b"\0" * 16, **options)
    stored.path.unlink()
    (stored.path.parent / SERIES_RECORD).unlink()
    stored.path.parent.rmdir()  # as a purge does, while this writer remembers the folder
    again = storage.write(relative.replace("1.2.3.4.dcm", "1.2.3.5.dcm"), b"\0" * 16, **options)
    assert again.path.is_file() and (again.path.parent / SERIES_RECORD).is_file()


def test_finishing_an_interrupted_purge_waits_for_a_purge_in_progress(
    node: Node, db: Database, settings: Settings
) -> None:
    """A series a listener is emptying (marked, rows not yet deleted) looks interrupted to serve:
    finishing it meanwhile recorded its purge twice (seen as two events for one series)."""
    sid = node.series(SeriesStatus.NOT_ANALYSED)
    with db.session() as s:
        series = s.get(Series, sid)
        assert series is not None
        series.purged_at = utcnow()  # another process marked it and is emptying it
    retention = Retention(db, settings)
    retention.lock_path.parent.mkdir(parents=True, exist_ok=True)
    done: list[int] = []
    with open(retention.lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # that process's turn
        finisher = threading.Thread(target=lambda: done.append(retention.finish_interrupted()))
        finisher.start()
        finisher.join(timeout=1.0)
        assert finisher.is_alive() and done == []  # it waits for its turn
        retention._empty(sid, "the other process ends its purge")
        fcntl.flock(lock, fcntl.LOCK_UN)
    finisher.join(timeout=30)
    assert done == [0]
    with db.reader() as conn:
        events = conn.scalar(select(func.count()).select_from(Event).where(Event.category == "retention"))
    assert events == 1
