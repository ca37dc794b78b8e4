"""The job state machine in the database: claims, heartbeats, the end of a job, lost workers.

States (dicom_node.jobs.states.JobStatus) and who moves a job between them::

    PENDING --relay--> QUEUED --claim--> RUNNING --finish--> DONE
       ^  |               |                 |   |
       |  +---------------+--a late instance (supersede_waiting)--> SUPERSEDED
       |                                  |   +--fail--> FAILED
       +---- lost-job scan (serve) -------+   +--the series changed--> SUPERSEDED
       +---- jobs retry (requeue) -------- DONE / FAILED

Series completion writes the PENDING job (dicom_node.jobs.completion); the outbox relay marks it
QUEUED (dicom_node.jobs.outbox); everything else is here.

A delivery of the job's message *claims* it (:func:`claim`) in one transaction (row locked on
PostgreSQL, BEGIN IMMEDIATE on SQLite):

- PENDING or QUEUED: claimed; RUNNING, ``attempts`` + 1, the worker's name, a fresh heartbeat.
- RUNNING with a heartbeat older than ``3 x heartbeat_seconds``: its worker is gone (a SIGKILL, a
  lost machine); the delivery takes it over the same way (this is how a message that Redis
  redelivers after its visibility timeout finishes the job).
- RUNNING with a fresh heartbeat: another worker has it. The delivery is a duplicate (a visibility
  timeout shorter than the job, a requeue racing a slow worker); :class:`Busy` tells the caller
  to wait a little and claim again, or to drop the duplicate.
- DONE, FAILED, SUPERSEDED: nothing to do.
- A job older than its series (the series re-opened and a newer generation exists) becomes
  SUPERSEDED instead of running.

Priority, the same with every broker: a delivery whose job waits runs the most urgent waiting job
instead when one is more urgent (higher ``priority``, dicom_node.triage.priority), so a STAT
series sent behind a backlog runs next, whatever order the broker hands the messages out in. The
job whose message was taken records it (``message_taken_by``) and keeps its place: it runs on the
next delivery of a job of its priority that comes after it (whose job then waits in its stead), or
on a delivery whose own job no longer waits (done, or running on another job's message): while
such a job waits, no delivery ends without running the most urgent waiting job. One message is
still one run, and no waiting job is left without one (tests/jobs/test_priority_queue.py delivers
messages in random orders with duplicates). A job of a worker
that died is taken over by its own message's redelivery as above, or requeued by the lost-job
scan.

The attempt number is the claim's token: the heartbeat, :func:`finish` and :func:`fail` change
the job only while it is still RUNNING under that attempt, so an attempt that lost the job to a
takeover can not overwrite the newer attempt's state. A job that finishes after its series
re-opened becomes SUPERSEDED and exports nothing: results are only ever exported for the newest
generation (output UIDs are the same for every generation, so an older export would replace the
newer results in PACS).

Exactly-once effect = this state machine + deterministic outputs (UIDs derived from the source
series UID, the model version and the output kind): a job run twice writes and sends the same
objects, and PACS replaces rather than duplicates.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence, cast

from sqlalchemy import CursorResult, and_, or_, select, update

from dicom_node.db import Database
from dicom_node.db.models import Event, Job, LocalAE, Series
from dicom_node.db.times import as_utc, utcnow
from dicom_node.errors import Conflict, NodeError, NotFound
from dicom_node.jobs import notifications
from dicom_node.jobs.outbox import ANALYSE_TOPIC, write_message
from dicom_node.jobs.states import ACTIVE_JOB_STATUSES, FINISHED_JOB_STATUSES, WAITING_JOB_STATUSES, JobStatus

log = logging.getLogger(__name__)

# A late instance re-opens its series (dicom_node.storage.index) and, in the same transaction,
# supersedes the series' jobs that have not started, so that at most one job waits per series.
# Plain SQL with :name parameters, run by the index on its DBAPI connection (see there why).
SUPERSEDE_WAITING_SQL = (
    "UPDATE jobs SET status = :superseded, reason = 'series re-opened by a late instance', finished_at = :now"
    " WHERE series_id = :series_id AND status IN (:pending, :queued)"
)


def supersede_waiting_params(series_id: int, now: object) -> dict[str, object]:
    """The parameters of :data:`SUPERSEDE_WAITING_SQL` (``now`` in the driver's time format)."""
    pending, queued = (st.value for st in WAITING_JOB_STATUSES)
    return {
        "superseded": JobStatus.SUPERSEDED.value,
        "now": now,
        "series_id": series_id,
        "pending": pending,
        "queued": queued,
    }


@dataclass(frozen=True)
class Claimed:
    """This worker now runs the job under ``attempt``."""

    job_id: int
    attempt: int
    series_id: int
    series_uid: str
    generation: int
    created_at: dt.datetime
    queue_wait: float  # seconds from queued (or created) to this claim
    took_over_from: str  # the lost worker's name, when this claim took the job over


@dataclass(frozen=True)
class Busy:
    """Another worker runs the job and its heartbeat is fresh."""

    job_id: int
    worker: str
    heartbeat_age: float


@dataclass(frozen=True)
class Skipped:
    """Nothing to do for this delivery: the job is finished, superseded or gone."""

    job_id: int
    status: str
    reason: str


_WAITING = [st.value for st in WAITING_JOB_STATUSES]


def _next_waiting(s: Any, db: Database, *, before: Job | None = None, any_job: bool = False) -> Job | None:
    """The waiting job to run next (the highest priority, then the oldest) among those whose
    message another job ran on and, with ``before``, those more urgent than ``before`` (with
    ``any_job``, among all); None when there is none, or when ``before`` comes first. Locked on
    PostgreSQL (rows that other claims hold are skipped)."""
    query = select(Job).where(Job.status.in_(_WAITING))
    if before is not None:
        query = query.where(or_(Job.priority > before.priority, Job.message_taken_by.is_not(None)))
    elif not any_job:
        query = query.where(Job.message_taken_by.is_not(None))
    query = query.order_by(Job.priority.desc(), Job.id).limit(1)
    if db.locks_rows:
        query = query.with_for_update(skip_locked=True)
    job = s.scalar(query)
    if job is None or before is None:
        return job
    return job if (job.priority, -job.id) > (before.priority, -before.id) else None


def claim(
    db: Database, job_id: int, *, worker: str, stale_after: float, now: dt.datetime | None = None
) -> Claimed | Busy | Skipped:
    """Claim the job that a delivery of ``job_id``'s message runs, for ``worker`` (see the module
    docstring): the first of the waiting jobs in priority order when it comes before ``job_id``."""
    now = now or utcnow()
    with db.session() as s:
        own = s.get(Job, job_id, with_for_update=db.locks_rows)
        if own is None:
            return Skipped(job_id, "missing", "no such job")
        while True:
            if own.status in _WAITING:
                job = _next_waiting(s, db, before=own) or own
            elif own.status == JobStatus.RUNNING.value and _heartbeat_age(own, now) >= stale_after:
                job = own  # its worker is gone: this delivery takes it over
            elif _next_waiting(s, db) is not None:
                # The job is done or runs, and a job waits whose message another one ran on: this
                # delivery is owed to it. It runs the most urgent job waiting (that one, or one
                # whose own message then is owed to it).
                job = _next_waiting(s, db, any_job=True) or own
            else:
                job = own
            outcome = _claim_one(s, job, job_id, worker=worker, stale_after=stale_after, now=now)
            if outcome is None:  # the job chosen was superseded meanwhile (and marked so)
                if job is own:
                    return Skipped(job_id, JobStatus.SUPERSEDED.value, own.reason)
                continue
            if isinstance(outcome, Claimed) and job is not own and own.status in _WAITING:
                own.message_taken_by = job.id
            return outcome


def _heartbeat_age(job: Job, now: dt.datetime) -> float:
    beat = as_utc(job.heartbeat_at or job.started_at) or now
    return (now - beat).total_seconds()


def _claim_one(
    s: Any, job: Job, delivered_for: int, *, worker: str, stale_after: float, now: dt.datetime
) -> Claimed | Busy | Skipped | None:
    """Claim ``job`` for the delivery of ``delivered_for``'s message; None when ``job`` turned out
    superseded (a newer generation of its series exists) and was marked so."""
    if job.status in {st.value for st in FINISHED_JOB_STATUSES}:
        return Skipped(job.id, job.status, job.reason)
    took_over = ""
    if job.status == JobStatus.RUNNING.value:
        age = _heartbeat_age(job, now)
        if age < stale_after:
            return Busy(job.id, job.worker, age)
        took_over = job.worker or "an unknown worker"
    series = s.get(Series, job.series_id)
    if series is None:
        return Skipped(job.id, "missing", "the series is gone")
    if job.generation < series.generation:
        reason = f"the series changed after this job was made (generation {job.generation}, now {series.generation})"
        job.status = JobStatus.SUPERSEDED.value
        job.reason = reason
        job.finished_at = now
        job.heartbeat_at = None
        s.flush()
        return None
    waited_from = as_utc(job.queued_at or job.created_at) or now
    job.status = JobStatus.RUNNING.value
    job.attempts = (job.attempts or 0) + 1
    job.worker = worker[:200]
    job.started_at = now
    job.heartbeat_at = now
    job.finished_at = None
    job.message_taken_by = None
    job.reason = f"attempt {job.attempts} took over from {took_over}, whose heartbeat stopped" if took_over else ""
    if took_over:
        _event(
            s,
            series,
            "warning",
            f"job {job.id}: worker {took_over} stopped; attempt {job.attempts} runs on {worker}",
        )
    elif job.id != delivered_for:
        log.info(
            "job %d (priority %d) runs before job %d, whose delivery this was", job.id, job.priority, delivered_for
        )
    return Claimed(
        job_id=job.id,
        attempt=job.attempts,
        series_id=series.id,
        series_uid=series.series_uid,
        generation=job.generation,
        created_at=as_utc(job.created_at) or now,
        queue_wait=max(0.0, (now - waited_from).total_seconds()),
        took_over_from=took_over,
    )


def beat(db: Database, job_id: int, attempt: int, now: dt.datetime | None = None) -> bool:
    """Write the heartbeat of a running attempt; False if the attempt no longer owns the job."""
    with db.session() as s:
        # An UPDATE's result is a CursorResult (with rowcount); Session.execute is typed Result.
        result = cast(
            CursorResult[Any],
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempts == attempt, Job.status == JobStatus.RUNNING.value)
                .values(heartbeat_at=now or utcnow())
            ),
        )
        changed = result.rowcount
    return bool(changed)


class LostOwnership(NodeError):
    """The attempt no longer owns its job (taken over, requeued or superseded meanwhile)."""


class Heartbeat:
    """A thread that writes the job's heartbeat every ``interval`` seconds while the attempt runs.

    Use as a context manager; :meth:`check` raises :class:`LostOwnership` once a beat found the
    job no longer RUNNING under this attempt. A failing beat (the database away for a moment) is
    logged and tried again: only a definite "not yours" ends the attempt.
    """

    def __init__(self, db: Database, job_id: int, attempt: int, interval: float) -> None:
        self.db = db
        self.job_id = job_id
        self.attempt = attempt
        self.interval = interval
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-job-{job_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not beat(self.db, self.job_id, self.attempt):
                    self._lost.set()
                    return
            except Exception as exc:  # the database may be away for a moment; keep beating
                log.warning("job %d: heartbeat failed: %s", self.job_id, exc)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        if self._lost.is_set():
            raise LostOwnership(f"job {self.job_id}: attempt {self.attempt} no longer owns the job")


def finish(
    db: Database,
    claimed: Claimed,
    *,
    fields: dict[str, Any],
    on_done: Any = None,
    notes: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> str:
    """End a claimed attempt: DONE with ``fields`` (decision, result, outputs, timings...), or
    SUPERSEDED when the series re-opened meanwhile. ``on_done(session, job, series)`` runs in the
    same transaction as DONE (the exports and their outbox message), as do the job's notifications
    (dicom_node.jobs.notifications; FAILED writes them too) and an info event per note of a DONE
    job (what admins should know of it, e.g. an output left out). Returns the job's status;
    raises :class:`LostOwnership` when the attempt no longer owns the job."""
    now = now or utcnow()
    with db.session() as s:
        job = s.get(Job, claimed.job_id, with_for_update=db.locks_rows)
        if job is None or job.status != JobStatus.RUNNING.value or job.attempts != claimed.attempt:
            raise LostOwnership(f"job {claimed.job_id}: attempt {claimed.attempt} no longer owns the job")
        series = s.get(Series, job.series_id)
        job.finished_at = now
        job.heartbeat_at = None
        for key, value in fields.items():
            setattr(job, key, value)
        if series is not None and series.generation > job.generation:
            job.status = JobStatus.SUPERSEDED.value
            job.reason = (
                f"the series re-opened while it was analysed (generation {job.generation}, now {series.generation}); "
                "its next job reports"
            )
            log.info("job %d superseded: %s", job.id, job.reason)
            return job.status
        job.status = JobStatus.DONE.value
        if series is not None:
            for note in notes:
                _event(s, series, "info", f"job {job.id}: {note}"[:2000])
        if on_done is not None:
            on_done(s, job, series)
        notifications.create_for_job(s, job, series, now)
        return job.status


def fail(
    db: Database,
    claimed: Claimed,
    reason: str,
    *,
    timings: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """FAILED with ``reason`` if the attempt still owns the job; returns whether it did."""
    now = now or utcnow()
    with db.session() as s:
        job = s.get(Job, claimed.job_id, with_for_update=db.locks_rows)
        if job is None or job.status != JobStatus.RUNNING.value or job.attempts != claimed.attempt:
            return False
        job.status = JobStatus.FAILED.value
        job.reason = reason[:4000]
        job.finished_at = now
        job.heartbeat_at = None
        if timings is not None:
            job.timings = timings
        series = s.get(Series, job.series_id)
        if series is not None:
            _event(s, series, "error", f"job {job.id} failed: {reason}"[:2000])
        notifications.create_for_job(s, job, series, now)
    return True


def recover_lost(db: Database, *, lost_after: float, now: dt.datetime | None = None) -> list[int]:
    """Requeue RUNNING jobs whose heartbeat is older than ``lost_after`` seconds (their worker
    died and the broker will not, or not soon, deliver the message again): PENDING with a reason
    and a new outbox message, in one transaction. Returns the job ids."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=lost_after)
    requeued = []
    with db.session() as s:
        silent = or_(Job.heartbeat_at < cutoff, and_(Job.heartbeat_at.is_(None), Job.started_at < cutoff))
        for job in s.scalars(select(Job).where(Job.status == JobStatus.RUNNING.value, silent)).all():
            beat_at = as_utc(job.heartbeat_at or job.started_at)
            if beat_at is None or beat_at >= cutoff:
                continue
            result = cast(
                CursorResult[Any],
                s.execute(  # an UPDATE: a CursorResult
                    update(Job)
                    .where(Job.id == job.id, Job.status == JobStatus.RUNNING.value, Job.attempts == job.attempts)
                    .values(
                        status=JobStatus.PENDING.value,
                        reason=f"requeued: worker {job.worker or '?'} stopped "
                        f"(no heartbeat since {beat_at.isoformat(timespec='seconds')})",
                        heartbeat_at=None,
                    )
                ),
            )
            if result.rowcount:
                write_message(s, ANALYSE_TOPIC, job.id, recovered=True)
                requeued.append(job.id)
                series = s.get(Series, job.series_id)
                if series is not None:
                    _event(s, series, "warning", f"job {job.id}: worker {job.worker or '?'} stopped; job requeued")
    for job_id in requeued:
        log.warning("job %d: its worker stopped; requeued", job_id)
    return requeued


class JobActive(Conflict):
    """The job is pending, queued or running: it is not retried unless forced."""

    def __init__(self, job_id: int, status: str) -> None:
        super().__init__(f"job {job_id} is {status}; only a finished job can be retried")
        self.job_id = job_id
        self.status = status


class ImagesPurged(Conflict):
    """The series' images were purged by retention: nothing to analyse again."""

    def __init__(self, job_id: int, purged_at: dt.datetime) -> None:
        super().__init__(
            f"job {job_id} can not be analysed again: the images of its series were purged on "
            f"{purged_at:%Y-%m-%d %H:%M} (retention); send the series again to analyse it"
        )


def requeue(db: Database, job_id: int, *, reason: str = "retry requested", force: bool = False) -> int:
    """Analyse a job again (retry on demand): PENDING with ``reason`` and a new outbox message, in
    one transaction. NotFound without such a job; refused with :class:`JobActive` while the job is
    pending, queued or running, unless ``force``, and with :class:`ImagesPurged` when retention
    removed the series' images. Returns the message id."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        if job.status in {st.value for st in ACTIVE_JOB_STATUSES} and not force:
            raise JobActive(job_id, job.status)
        # The series row locked: retention (dicom_node.storage.retention) checks it the same way.
        series = s.get(Series, job.series_id, with_for_update=db.locks_rows)
        if series is not None and series.purged_at is not None:
            raise ImagesPurged(job_id, series.purged_at)
        s.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.PENDING.value, reason=reason, finished_at=None)
        )
        message = write_message(s, ANALYSE_TOPIC, job_id, retry=True)
        s.flush()
        return message.id


def _event(s: Any, series: Series, level: str, message: str) -> None:
    local_ae = s.get(LocalAE, series.local_ae_id) if series.local_ae_id is not None else None
    s.add(
        Event(
            level=level,
            category="job",
            message=message,
            calling_ae=series.calling_ae,
            calling_host=series.calling_host,
            local_ae=local_ae.title if local_ae is not None else "",
        )
    )
