"""The job and export state machines (dicom_node.jobs.analyses, dicom_node.jobs.exports) on a real
database, SQLite (the fast tier) and PostgreSQL (the services tier): claims and takeovers, ownership
by attempt, superseded generations, the lost-job scan, export targets (destinations and the calling
AE), backoff, permanent refusals, the maximum age, the due-exports scheduler, re-export and the jobs
listing.

Send results are made by hand (dicom_node.sending.scu is tested against a real SCP in test_scu.py); no
model, no Celery, no network here.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import Destination, Event, Export, Job, LocalAE, OutboxMessage, Series, Source
from dicom_node.db.times import as_utc, utcnow
from dicom_node.errors import Conflict, NotFound
from dicom_node.jobs import analyses, exports
from dicom_node.jobs.queries import job_rows
from dicom_node.jobs.states import ExportStatus, JobStatus, SeriesStatus
from dicom_node.outputs.kinds import OUTPUT_KINDS
from dicom_node.sending.scu import Outcome, Peer, SendResult
from dicom_node.settings import ExportSettings

STALE = 15.0
Row = TypeVar("Row")
# What the node passes as default outputs (the caller, a destination naming none): the settings' default,
# every kind of the registry, as a destination made without outputs also gets.
OUTPUTS = tuple(ExportSettings().default_outputs)
POLICY = exports.RetryPolicy(backoff_base=10.0, backoff_cap=40.0, max_age=300.0)


def make_job(
    db: Database, *, destinations: int = 1, return_to_caller: bool = False, status: JobStatus = JobStatus.QUEUED
) -> int:
    """A local AE with ``destinations`` destinations, a complete series from CALLER@10.0.0.7 and
    a job for it."""
    with db.session() as s:
        dests = [
            Destination(title=f"PACS{i}", host="127.0.0.1", port=10400 + i, outputs=OUTPUTS)
            for i in range(destinations)
        ]
        ae = LocalAE(
            title="NODE", port=11112, quiet_seconds=5.0, max_wait_seconds=1800.0, return_to_caller=return_to_caller
        )
        ae.destinations = dests
        s.add(ae)
        s.flush()
        series = Series(
            series_uid="1.2.3.4",
            study_uid="1.2.3",
            local_ae_id=ae.id,
            calling_ae="CALLER",
            calling_host="10.0.0.7",
            status=SeriesStatus.COMPLETE.value,
        )
        s.add(series)
        s.flush()
        job = Job(series_id=series.id, status=status.value, queued_at=utcnow())
        s.add(job)
        s.flush()
        return job.id


def one(s: Session, model: type[Row], ident: int) -> Row:
    row = s.get(model, ident)
    assert row is not None, f"no {model.__name__} {ident}"
    return row


def get(db: Database, model: type[Row], ident: int) -> Row:
    with db.session() as s:
        row = s.get(model, ident)
    assert row is not None, f"no {model.__name__} {ident}"
    return row


def done_job(db: Database, **kw: Any) -> tuple[int, analyses.Claimed]:
    job_id = make_job(db, **kw)
    claimed = analyses.claim(db, job_id, worker="w1", stale_after=STALE)
    assert isinstance(claimed, analyses.Claimed)
    fields = {
        "decision": "covid",
        "outputs": [
            {"kind": "sr", "path": f"{job_id}/dicom/sr/1.dcm"},
            {"kind": "sc", "path": f"{job_id}/dicom/sc/2.dcm"},
        ],
    }
    status = analyses.finish(
        db, claimed, fields=fields, on_done=lambda s, job, series: exports.create_for_job(s, job, series, OUTPUTS)
    )
    assert status == JobStatus.DONE.value
    return job_id, claimed


# --- jobs ------------------------------------------------------------------------------------


def test_claim_runs_a_queued_job_once(db: Database) -> None:
    job_id = make_job(db)
    first = analyses.claim(db, job_id, worker="w1", stale_after=STALE)
    assert isinstance(first, analyses.Claimed) and first.attempt == 1 and not first.took_over_from
    job = get(db, Job, job_id)
    assert job.status == JobStatus.RUNNING.value and job.worker == "w1" and job.heartbeat_at is not None
    second = analyses.claim(db, job_id, worker="w2", stale_after=STALE)
    assert isinstance(second, analyses.Busy) and second.worker == "w1"


def test_a_stale_heartbeat_is_taken_over_and_the_old_attempt_loses_the_job(db: Database) -> None:
    job_id = make_job(db)
    first = analyses.claim(db, job_id, worker="w1", stale_after=STALE)
    assert isinstance(first, analyses.Claimed)
    later = utcnow() + dt.timedelta(seconds=STALE + 1)
    second = analyses.claim(db, job_id, worker="w2", stale_after=STALE, now=later)
    assert isinstance(second, analyses.Claimed) and second.attempt == 2 and second.took_over_from == "w1"
    assert not analyses.beat(db, job_id, first.attempt)
    assert analyses.beat(db, job_id, second.attempt)
    with pytest.raises(analyses.LostOwnership):
        analyses.finish(db, first, fields={"decision": "normal"})
    assert not analyses.fail(db, first, "late failure")
    assert analyses.finish(db, second, fields={"decision": "covid"}) == JobStatus.DONE.value
    job = get(db, Job, job_id)
    assert (job.status, job.attempts, job.decision) == (JobStatus.DONE.value, 2, "covid")
    assert isinstance(analyses.claim(db, job_id, worker="w3", stale_after=STALE), analyses.Skipped)


def test_heartbeat_thread_notices_a_takeover(db: Database) -> None:
    job_id = make_job(db)
    first = analyses.claim(db, job_id, worker="w1", stale_after=STALE)
    assert isinstance(first, analyses.Claimed)
    analyses.claim(db, job_id, worker="w2", stale_after=STALE, now=utcnow() + dt.timedelta(seconds=STALE + 1))
    with analyses.Heartbeat(db, job_id, first.attempt, interval=0.05) as hb:
        deadline = time.monotonic() + 5
        while not hb.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(analyses.LostOwnership):
            hb.check()


def test_an_older_generation_is_superseded_at_claim_and_at_finish(db: Database) -> None:
    job_id = make_job(db)
    with db.session() as s:
        one(s, Series, one(s, Job, job_id).series_id).generation = 1
    skipped = analyses.claim(db, job_id, worker="w1", stale_after=STALE)
    assert isinstance(skipped, analyses.Skipped) and skipped.status == JobStatus.SUPERSEDED.value

    job_id2 = make_job_for_same_series(db, job_id, generation=1)
    claimed = analyses.claim(db, job_id2, worker="w1", stale_after=STALE)
    assert isinstance(claimed, analyses.Claimed)
    with db.session() as s:
        one(s, Series, claimed.series_id).generation = 2  # a late instance re-opened it
    called = []
    status = analyses.finish(db, claimed, fields={"decision": "covid"}, on_done=lambda *a: called.append(a))
    assert status == JobStatus.SUPERSEDED.value and not called
    with db.session() as s:
        assert s.scalar(select(Export).where(Export.job_id == job_id2)) is None


def make_job_for_same_series(db: Database, job_id: int, generation: int) -> int:
    with db.session() as s:
        series_id = one(s, Job, job_id).series_id
        job = Job(series_id=series_id, generation=generation, status=JobStatus.QUEUED.value, queued_at=utcnow())
        s.add(job)
        s.flush()
        return job.id


def test_fail_records_the_reason_and_an_event(db: Database) -> None:
    job_id = make_job(db)
    claimed = analyses.claim(db, job_id, worker="w1", stale_after=STALE)
    assert isinstance(claimed, analyses.Claimed)
    assert analyses.fail(db, claimed, "the series could not be read: no images")
    job = get(db, Job, job_id)
    assert job.status == JobStatus.FAILED.value and "no images" in job.reason
    with db.session() as s:
        assert any("no images" in e.message for e in s.scalars(select(Event)))


def test_lost_jobs_are_requeued_through_the_outbox(db: Database) -> None:
    job_id = make_job(db)
    claimed = analyses.claim(db, job_id, worker="w1", stale_after=STALE)
    assert isinstance(claimed, analyses.Claimed)
    assert analyses.recover_lost(db, lost_after=60) == []
    assert analyses.recover_lost(db, lost_after=60, now=utcnow() + dt.timedelta(seconds=61)) == [job_id]
    job = get(db, Job, job_id)
    assert job.status == JobStatus.PENDING.value and "w1 stopped" in job.reason
    with db.session() as s:
        assert (
            s.scalar(select(OutboxMessage).where(OutboxMessage.job_id == job_id, OutboxMessage.topic == "analyse"))
            is not None
        )
    again = analyses.claim(db, job_id, worker="w2", stale_after=STALE)
    assert isinstance(again, analyses.Claimed) and again.attempt == 2


# --- exports ---------------------------------------------------------------------------------


def test_done_job_gets_one_export_per_destination_and_the_caller(db: Database) -> None:
    job_id = make_job(db, destinations=2, return_to_caller=True)
    with db.session() as s:
        s.add(Source(title="CALLER", host="10.0.0.7", port=4242))
        s.add(Source(title="CALLER", host=None, port=None))
    claimed = analyses.claim(db, job_id, worker="w1", stale_after=STALE)
    assert isinstance(claimed, analyses.Claimed)
    with db.session() as s:
        one(s, Destination, 2).outputs = ["sr"]
    analyses.finish(
        db, claimed, fields={}, on_done=lambda s, job, series: exports.create_for_job(s, job, series, OUTPUTS)
    )
    with db.session() as s:
        rows = s.scalars(select(Export).where(Export.job_id == job_id).order_by(Export.id)).all()
        keys = [(r.destination_key, r.title, r.host, r.port, r.outputs, r.status) for r in rows]
        messages = s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "export")).all()
    assert keys == [
        ("dest:1", "PACS0", "127.0.0.1", 10400, list(OUTPUT_KINDS), "pending"),  # made with every kind
        ("dest:2", "PACS1", "127.0.0.1", 10401, ["sr"], "pending"),
        ("caller:CALLER@10.0.0.7:4242", "CALLER", "10.0.0.7", 4242, list(OUTPUTS), "pending"),
    ]
    assert len(messages) == 1 and messages[0].job_id == job_id


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [exports.backoff_seconds(n, 10, 40) for n in range(0, 6)] == [0, 10, 20, 40, 40, 40]


def _claim_export(db: Database, job_id: int, now: dt.datetime | None = None) -> exports.ExportClaim:
    due = exports.due_for_job(db, job_id, stale_after=300, now=now)
    assert len(due) == 1, due
    claimed = exports.claim(db, due[0], stale_after=300, now=now)
    assert claimed is not None
    return claimed


def test_export_claim_gives_the_files_of_its_kinds(db: Database) -> None:
    job_id, _ = done_job(db)
    with db.session() as s:
        s.scalars(select(Export)).one().outputs = ["sc"]
    claimed = _claim_export(db, job_id)
    assert [str(p) for p in claimed.files] == [f"{job_id}/dicom/sc/2.dcm"]
    assert claimed.peer == Peer("PACS0", "127.0.0.1", 10400)
    assert exports.claim(db, claimed.export_id, stale_after=300) is None  # being sent


def test_retriable_failures_back_off_then_fail_after_the_maximum_age(db: Database) -> None:
    job_id, _ = done_job(db)
    now = utcnow()
    retriable = SendResult(Outcome.RETRIABLE, "no association with PACS0@127.0.0.1:10400")
    delays = []
    for attempt in range(1, 20):
        claimed = _claim_export(db, job_id, now=now)
        assert claimed.attempt == attempt
        status = exports.record(db, claimed, retriable, POLICY, now=now)
        if status == ExportStatus.FAILED.value:
            break
        assert status == ExportStatus.RETRYING.value
        row = get(db, Export, claimed.export_id)
        assert row.next_attempt_at is not None
        delay = (as_utc(row.next_attempt_at) - now).total_seconds()
        delays.append(delay)
        assert exports.due_for_job(db, job_id, stale_after=300, now=now) == []  # not yet due
        now = now + dt.timedelta(seconds=delay)
    # Attempts at 0, 10, 30, 70, 110, 150, 190, 230, 270 s; the next one (310 s) is past 300 s.
    assert delays == [10, 20, 40, 40, 40, 40, 40, 40]
    assert status == ExportStatus.FAILED.value
    row = get(db, Export, claimed.export_id)
    assert row.attempts == 9
    assert "gave up after 9 attempts" in row.last_error and "no association" in row.last_error


def test_a_permanent_refusal_fails_at_once(db: Database) -> None:
    job_id, _ = done_job(db)
    claimed = _claim_export(db, job_id)
    status = exports.record(db, claimed, SendResult(Outcome.PERMANENT, "association rejected by PACS0"), POLICY)
    assert status == ExportStatus.FAILED.value
    row = get(db, Export, claimed.export_id)
    assert row.attempts == 1 and row.last_error.startswith("refused (not retried)")
    assert exports.dispatch_due(db, stale_after=300, now=utcnow() + dt.timedelta(days=1)) == []
    with db.session() as s:
        assert any("failed" in e.message for e in s.scalars(select(Event).where(Event.category == "export")))


def test_success_records_objects_and_the_export_time(db: Database) -> None:
    job_id, _ = done_job(db)
    claimed = _claim_export(db, job_id)
    result = SendResult(Outcome.SUCCESS, "", seconds=1.25)
    assert exports.record(db, claimed, result, POLICY) == ExportStatus.DONE.value
    job = get(db, Job, job_id)
    assert job.timings["export"] == 1.25 and job.timings["export_by_destination"] == {"PACS0": 1.25}


def test_scheduler_dispatches_due_and_stale_exports_once(db: Database) -> None:
    job_id, _ = done_job(db)
    claimed = _claim_export(db, job_id)
    exports.record(db, claimed, SendResult(Outcome.RETRIABLE, "busy"), POLICY)
    now = utcnow()
    assert exports.dispatch_due(db, stale_after=300, now=now) == []
    later = now + dt.timedelta(seconds=11)
    assert exports.dispatch_due(db, stale_after=300, now=later) == [job_id]
    assert exports.dispatch_due(db, stale_after=300, now=later) == []  # queued now, not again
    assert get(db, Export, claimed.export_id).status == ExportStatus.PENDING.value
    # A send whose worker died: SENDING without progress for stale_after.
    again = exports.claim(db, claimed.export_id, stale_after=300, now=later)
    assert again is not None
    much_later = later + dt.timedelta(seconds=301)
    assert exports.dispatch_due(db, stale_after=300, now=much_later) == [job_id]
    row = get(db, Export, claimed.export_id)
    assert row.status == ExportStatus.PENDING.value and "worker lost" in row.last_error


def test_an_older_job_does_not_export_over_a_newer_one(db: Database) -> None:
    job_id, _ = done_job(db)
    newer = make_job_for_same_series(db, job_id, generation=0)
    due = exports.due_for_job(db, job_id, stale_after=300)
    assert exports.claim(db, due[0], stale_after=300) is None
    row = get(db, Export, due[0])
    assert row.status == ExportStatus.FAILED.value and f"job {newer}" in row.last_error


def test_reexport_resets_the_rows_and_adds_a_new_destination(db: Database) -> None:
    job_id, _ = done_job(db)
    claimed = _claim_export(db, job_id)
    exports.record(db, claimed, SendResult(Outcome.PERMANENT, "refused"), POLICY)
    with db.session() as s:
        s.add(Destination(title="ARCHIVE", host="127.0.0.1", port=10500, outputs=["sr"]))
    ids = exports.reexport(db, job_id, default_outputs=OUTPUTS)
    assert ids == [claimed.export_id]
    row = get(db, Export, claimed.export_id)
    assert (row.status, row.attempts, row.last_error) == (ExportStatus.PENDING.value, 0, "")
    archive = exports.reexport(db, job_id, default_outputs=OUTPUTS, destination="ARCHIVE")
    assert len(archive) == 1 and get(db, Export, archive[0]).outputs == ["sr"]
    with pytest.raises(NotFound, match="no destination titled 'NOPE'"):
        exports.reexport(db, job_id, default_outputs=OUTPUTS, destination="NOPE")
    analyses.requeue(db, job_id)
    with pytest.raises(Conflict, match="only a done job"):
        exports.reexport(db, job_id, default_outputs=OUTPUTS)


def test_job_rows_list_exports_per_destination(db: Database) -> None:
    job_id, _ = done_job(db, destinations=2)
    rows = job_rows(db)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == job_id and row["status"] == "done" and row["decision"] == "covid" and row["attempts"] == 1
    assert row["output_counts"] == {"sr": 1, "sc": 1}
    assert [(e["destination"], e["status"], e["attempts"]) for e in row["exports"]] == [
        ("PACS0", "pending", 0),
        ("PACS1", "pending", 0),
    ]
    assert job_rows(db, status="failed") == []
