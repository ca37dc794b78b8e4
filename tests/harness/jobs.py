"""Killing a worker mid-job, whatever the model's speed (the end-to-end and container tests).

:func:`hold_running_job` waits until a job of one of the given series is RUNNING and yields it
while holding the job's row lock (PostgreSQL: SELECT ... FOR UPDATE; SQLite: the BEGIN IMMEDIATE
of every write transaction, dicom_node.db.engine, locks the whole file). The attempt records DONE
or FAILED only under that lock (dicom_node.jobs.analyses.finish and fail), so a worker killed
inside the block is killed before its job ended, however fast the job is: no sleep "into the job"
and no guess of how long it takes. What the kill did to the job (a second attempt) is for the
test to check afterwards.

It polls every ``interval`` seconds, holding the lock only for the one query: a job would have to
be claimed, read its series, be analysed and be finished within one interval to slip through
unseen. Nothing in the node imports this.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Job, Series
from dicom_node.jobs.states import JobStatus


@dataclass(frozen=True)
class RunningJob:
    id: int
    series_uid: str
    worker: str  # as the job records it: host:pid of the worker process
    attempt: int


@contextlib.contextmanager
def hold_running_job(
    db: Database, series_uids: Sequence[str], timeout: float, interval: float = 0.02
) -> Iterator[RunningJob]:
    """Wait (up to ``timeout`` seconds) for a RUNNING job of one of ``series_uids`` and yield it
    with its row locked; the lock ends with the block. Raises AssertionError, with the jobs'
    statuses, when none runs in time or one of them ends before it was seen running."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as s:
            query = (
                select(Job, Series.series_uid)
                .join(Series, Series.id == Job.series_id)
                .where(Series.series_uid.in_(series_uids))
                .order_by(Job.id)
            )
            if db.locks_rows:
                query = query.with_for_update(of=Job)
            rows = s.execute(query).all()
            for job, uid in rows:
                if job.status == JobStatus.RUNNING.value:
                    yield RunningJob(job.id, uid, job.worker, job.attempts)
                    return
            seen = {uid: job.status for job, uid in rows}
        ended = [uid for uid, status in seen.items() if status in (JobStatus.DONE.value, JobStatus.FAILED.value)]
        if ended and len(ended) == len(series_uids):
            raise AssertionError(f"every job ended before it was seen running: {seen}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no job of {list(series_uids)} ran within {timeout:.0f} s: {seen}")
        time.sleep(interval)
