"""Priority in the job state machine, on SQLite and PostgreSQL: completion gives a job the
priority of the rules (and the series the study names read from its stored file); deliveries of the
queue's messages, in whatever order the broker hands them out, run the most urgent waiting job
first, keep the order among equals, run every job once and leave no job without a message.

The deliveries are calls of dicom_node.jobs.analyses.claim as a worker makes them (no broker, no
model here): tests/e2e/test_priority.py runs a worker on each broker.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Job, LocalAE, PriorityRule, Series
from dicom_node.db.times import utcnow
from dicom_node.jobs import analyses
from dicom_node.jobs.completion import Completion
from dicom_node.jobs.states import JobStatus, SeriesStatus
from dicom_node.settings import CompletionSettings
from dicom_node.storage.files import Storage
from dicom_node.storage.index import Index, ReceivedInstance
from dicom_node.triage.priority import Priority
from model.phantoms.writer import write_phantom_series

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
STALE = 15.0
_serial = itertools.count(1)


def test_completion_sets_the_priority_and_the_study_names(db: Database, tmp_path: Path) -> None:
    storage = Storage(tmp_path / "storage")
    with db.session() as s:
        s.add(LocalAE(title="NODE", port=11112, quiet_seconds=5.0, max_wait_seconds=60.0, filters={}))
        s.add(PriorityRule(name="er", priority="stat", conditions={"calling_ae": ["ER_CT"]}))
        s.add(PriorityRule(name="chest", priority="high", conditions={"study_description_pattern": "thorax"}))
        s.add(PriorityRule(name="off", priority="stat", conditions={}, enabled=False))
        s.flush()
        ae_id = s.scalar(select(LocalAE.id))
    index = Index(db)
    for n, calling in enumerate(["ER_CT", "CT2"]):
        folder = write_phantom_series(
            "normal", tmp_path / f"ct{n}", seed=40 + n, slices=4, rows=32, columns=32, patient_name=f"Doe^{n}"
        )
        for k, path in enumerate(sorted(folder.glob("*.dcm"))):
            relative = f"s{n}/{k}.dcm"
            (storage.root / relative).parent.mkdir(parents=True, exist_ok=True)
            (storage.root / relative).write_bytes(path.read_bytes())
            index.record(
                ReceivedInstance(
                    local_ae_id=ae_id, calling_ae=calling, calling_host="127.0.0.1", study_uid=f"1.2.{n}",
                    series_uid=f"1.2.{n}.1", sop_instance_uid=f"1.2.{n}.1.{k}", modality="CT",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=relative, size_bytes=1,
                ),
                T0,
            )  # fmt: skip
    done = Completion(db, CompletionSettings(), storage_dir=storage.root).run_once(T0 + dt.timedelta(seconds=10))
    by_uid = {c.series_uid: c for c in done}
    assert by_uid["1.2.0.1"].priority == Priority.STAT and by_uid["1.2.1.1"].priority == Priority.ROUTINE
    with db.session() as s:
        rows = {series.series_uid: (series, job) for job, series in s.execute(select(Job, Series).join(Series))}
        er_series, er_job = rows["1.2.0.1"]
        assert (er_job.priority, er_job.priority_reason) == (Priority.STAT, "rule er")
        assert rows["1.2.1.1"][1].priority_reason == "no priority rule matched"
        assert er_series.patient_name == "Doe^0"


def make_jobs(db: Database, priorities: list[Priority]) -> list[int]:
    """One complete series and one QUEUED job per priority, in this order (the queue's order)."""
    ids = []
    with db.session() as s:
        for p in priorities:
            series = Series(series_uid=f"1.9.{next(_serial)}", study_uid="1.9", status=SeriesStatus.COMPLETE.value)
            s.add(series)
            s.flush()
            job = Job(series_id=series.id, status=JobStatus.QUEUED.value, priority=int(p), queued_at=utcnow())
            s.add(job)
            s.flush()
            ids.append(job.id)
    return ids


def run(db: Database, delivered: int) -> int | None:
    """A worker's delivery of ``delivered``'s message: claim, then finish at once. The job run."""
    outcome = analyses.claim(db, delivered, worker="w1", stale_after=STALE)
    if not isinstance(outcome, analyses.Claimed):
        return None
    assert analyses.finish(db, outcome, fields={"decision": "normal"}) == JobStatus.DONE.value
    return outcome.job_id


def test_a_stat_job_queued_last_runs_next_and_the_order_of_the_rest_is_kept(db: Database) -> None:
    routine = make_jobs(db, [Priority.ROUTINE] * 6)
    first = analyses.claim(db, routine[0], worker="w1", stale_after=STALE)  # running when the STAT job comes
    assert isinstance(first, analyses.Claimed)
    (stat,) = make_jobs(db, [Priority.STAT])
    analyses.finish(db, first, fields={"decision": "normal"})
    ran = [first.job_id] + [run(db, message) for message in [*routine[1:], stat]]
    assert ran == [routine[0], stat, *routine[1:]], "STAT next, then the routine jobs in their order"
    with db.session() as s:
        assert {j.status for j in s.scalars(select(Job))} == {JobStatus.DONE.value}
        assert all(j.attempts == 1 for j in s.scalars(select(Job))), "every job ran once"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_delivery_order_runs_every_job_once_most_urgent_first(db: Database, seed: int) -> None:
    rng = random.Random(seed)
    priorities = [rng.choice(list(Priority)) for _ in range(12)]
    ids = make_jobs(db, priorities)
    messages = ids + [rng.choice(ids) for _ in range(3)]  # and three duplicate deliveries
    rng.shuffle(messages)
    ran = [job for job in (run(db, m) for m in messages) if job is not None]
    assert sorted(ran) == sorted(ids), "each job once, none left waiting"
    rank = {job_id: int(p) for job_id, p in zip(ids, priorities)}
    assert [rank[j] for j in ran] == sorted((rank[j] for j in ran), reverse=True), "the most urgent first"


def test_a_superseded_job_is_passed_over(db: Database) -> None:
    routine, stat = make_jobs(db, [Priority.ROUTINE, Priority.STAT])
    with db.session() as s:
        job = s.get(Job, stat)
        assert job is not None
        series = s.get(Series, job.series_id)
        assert series is not None
        series.generation = 1  # a late instance re-opened it: its job is of an older generation
    assert run(db, routine) == routine
    with db.session() as s:
        assert s.get(Job, stat).status == JobStatus.SUPERSEDED.value  # type: ignore[union-attr]
    assert run(db, stat) is None


def test_a_redelivered_message_of_a_job_whose_worker_died_takes_it_over(db: Database) -> None:
    (job_id,) = make_jobs(db, [Priority.ROUTINE])
    past = utcnow() - dt.timedelta(seconds=60)
    first = analyses.claim(db, job_id, worker="dead", stale_after=STALE, now=past)
    assert isinstance(first, analyses.Claimed)
    make_jobs(db, [Priority.STAT])  # waits; the redelivery still takes the lost job over first
    again = analyses.claim(db, job_id, worker="w2", stale_after=STALE)
    assert isinstance(again, analyses.Claimed) and again.job_id == job_id and again.took_over_from == "dead"


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_two_workers_and_duplicates_leave_no_job_behind(db: Database, seed: int) -> None:
    """Two workers: deliveries come while jobs run (a duplicate of a running job is dropped, as a
    worker does once the heartbeat stays fresh); every job still runs exactly once."""
    rng = random.Random(seed)
    ids = make_jobs(db, [rng.choice(list(Priority)) for _ in range(10)])
    queue = ids + [rng.choice(ids) for _ in range(4)]
    rng.shuffle(queue)
    running: list[analyses.Claimed] = []
    while queue or running:
        if running and (len(running) == 2 or not queue or rng.random() < 0.4):
            done = running.pop(rng.randrange(len(running)))
            analyses.finish(db, done, fields={"decision": "normal"})
            continue
        outcome = analyses.claim(db, queue.pop(0), worker=f"w{len(running)}", stale_after=STALE)
        if isinstance(outcome, analyses.Claimed):
            running.append(outcome)
    with db.session() as s:
        jobs = list(s.scalars(select(Job)))
    assert [(j.status, j.attempts) for j in jobs] == [(JobStatus.DONE.value, 1)] * len(ids)
