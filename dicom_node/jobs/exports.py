"""The export state machine in the database: one Export row per (job, destination).

States (dicom_node.jobs.states.ExportStatus)::

    PENDING --claim--> SENDING --success--> DONE
       ^                  |----permanent refusal----------------> FAILED
       |                  +----retriable--> RETRYING --(due)--+
       |                                        |  (beyond the maximum age) --> FAILED
       +----- due-exports scan (serve) ---------+
       +----- jobs export (re-export on demand) -- DONE / FAILED

- :func:`create_for_job` writes the rows when a job is DONE, in the job's transaction, with one
  outbox message (topic "export") for the job: the destinations of the local AE that received
  the series (enabled ones, each with its ``outputs``), and the calling AE itself when the local
  AE has ``return_to_caller`` and the caller's return port is known (a Source row with a port).
  A job that runs again resets its rows to PENDING, so the new results are sent again.
- :func:`claim` moves a PENDING (or due RETRYING) row to SENDING, ``attempts`` + 1. It refuses,
  with FAILED and the reason, to send results of a job that is not the newest of its series.
- :func:`record` ends an attempt: DONE; FAILED at once for a permanent refusal (no retry
  storm); otherwise RETRYING with the next attempt at ``min(cap, base * 2 ** (attempts - 1))``
  seconds, until the next attempt would be later than ``max_age`` after the row was (re)started,
  then FAILED with the last error.
- :func:`dispatch_due` is the scheduler, run by ``serve`` every second: due RETRYING rows go back
  to PENDING with an outbox message (so retries survive any restart and never sit in the broker
  as long countdowns), and rows queued or sending without progress for ``stale_after`` seconds
  (a lost message or a killed worker) are dispatched again. ``updated_at`` is the progress clock:
  the sender touches it after every object.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import Destination, Event, Export, Job, LocalAE, Series, Source
from dicom_node.db.times import as_utc, utcnow
from dicom_node.errors import Conflict, NotFound
from dicom_node.jobs.outbox import EXPORT_TOPIC, write_message
from dicom_node.jobs.states import OPEN_EXPORT_STATUSES, ExportStatus, JobStatus
from dicom_node.sending.dicomweb import WebPeer, web_echo
from dicom_node.sending.echo import EchoResult, c_echo
from dicom_node.sending.scu import Outcome, Peer, SendResult
from dicom_node.settings import ExportSettings
from dicom_node.validation import DestinationKind

log = logging.getLogger(__name__)

_OPEN = [st.value for st in OPEN_EXPORT_STATUSES]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff base and cap, and the maximum age of an export (seconds; ExportSettings)."""

    backoff_base: float
    backoff_cap: float
    max_age: float

    @classmethod
    def from_settings(cls, settings: ExportSettings) -> "RetryPolicy":
        return cls(settings.backoff_base_seconds, settings.backoff_cap_seconds, settings.max_age_seconds)


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Delay before the next attempt after ``attempts`` failed ones: base, 2 base, 4 base... capped."""
    if attempts < 1:
        return 0.0
    return float(min(cap, base * 2 ** min(attempts - 1, 62)))


@dataclass(frozen=True)
class Target:
    """Where one export goes and what it gets."""

    key: str
    destination_id: int | None
    title: str
    host: str
    port: int
    outputs: list[str]
    kind: str = DestinationKind.DIMSE.value  # the destination's: dimse or dicomweb


def targets_for(s: Session, series: Series, default_outputs: Sequence[str]) -> list[Target]:
    """The destinations of the local AE that received ``series``, and the caller when asked for."""
    if series.local_ae_id is None:
        return []
    ae = s.get(LocalAE, series.local_ae_id)
    if ae is None:
        return []
    out = [
        Target(f"dest:{d.id}", d.id, d.title, d.host, d.port, list(d.outputs), d.kind)
        for d in sorted(ae.destinations, key=lambda d: d.id)
        if d.enabled
    ]
    if ae.return_to_caller and series.calling_ae and series.calling_host:
        sources = s.scalars(select(Source).where(Source.title == series.calling_ae, Source.enabled.is_(True))).all()
        # A row for this host is more specific than one for any host.
        for src in sorted(sources, key=lambda r: r.host is None):
            if src.port is not None and src.host in (None, series.calling_host):
                key = f"caller:{series.calling_ae}@{series.calling_host}:{src.port}"
                out.append(Target(key, None, series.calling_ae, series.calling_host, src.port, list(default_outputs)))
                break
    return out


def _reset(row: Export, now: dt.datetime) -> None:
    row.status = ExportStatus.PENDING.value
    row.attempts = 0
    row.objects_sent = 0
    row.next_attempt_at = None
    row.last_error = ""
    row.finished_at = None
    row.created_at = now  # the maximum age counts from the (re)start of sending
    row.updated_at = now


def create_for_job(
    s: Session, job: Job, series: Series, default_outputs: Sequence[str], now: dt.datetime | None = None
) -> list[Export]:
    """Write (or reset) the job's Export rows and one outbox message, in the caller's transaction."""
    now = now or utcnow()
    existing = {e.destination_key: e for e in s.scalars(select(Export).where(Export.job_id == job.id))}
    rows = []
    for t in targets_for(s, series, default_outputs):
        row = existing.get(t.key)
        if row is None:
            row = Export(job_id=job.id, destination_key=t.key)
            s.add(row)
        row.destination_id = t.destination_id
        row.title, row.host, row.port, row.outputs, row.kind = t.title, t.host, t.port, t.outputs, t.kind
        _reset(row, now)
        rows.append(row)
    if rows:
        s.flush()
        write_message(s, EXPORT_TOPIC, job.id, exports=[r.id for r in rows])
    return rows


def reexport(db: Database, job_id: int, *, default_outputs: Sequence[str], destination: str | None = None) -> list[int]:
    """Send a DONE job's results again (all its exports, or those to the destination titled
    ``destination``, creating that export if the destination was added since). Returns the
    export ids. NotFound without such a job or destination; Conflict when the job is not done or
    has no destination."""
    now = utcnow()
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        if job.status != JobStatus.DONE.value:
            raise Conflict(f"job {job_id} is {job.status}; only a done job's results can be sent (retry it first)")
        series = s.get(Series, job.series_id)
        rows = list(s.scalars(select(Export).where(Export.job_id == job.id).order_by(Export.id)))
        if destination is not None:
            rows = [r for r in rows if r.title == destination]
            if not rows:
                dest = s.scalar(select(Destination).where(Destination.title == destination))
                if dest is None:
                    raise NotFound(f"no destination titled {destination!r}")
                row = Export(job_id=job.id, destination_key=f"dest:{dest.id}", destination_id=dest.id)
                row.title, row.host, row.port, row.outputs, row.kind = (
                    dest.title,
                    dest.host,
                    dest.port,
                    list(dest.outputs),
                    dest.kind,
                )
                s.add(row)
                rows = [row]
        elif series is not None:
            # Destinations added to the local AE since the job ran get the results too.
            known = {r.destination_key for r in rows}
            for t in targets_for(s, series, default_outputs):
                if t.key not in known:
                    row = Export(job_id=job.id, destination_key=t.key, destination_id=t.destination_id)
                    row.title, row.host, row.port, row.outputs, row.kind = t.title, t.host, t.port, t.outputs, t.kind
                    s.add(row)
                    rows.append(row)
        if not rows:
            raise Conflict(f"job {job_id} has no destination to send to")
        for row in rows:
            _reset(row, now)
        s.flush()
        ids = [r.id for r in rows]
        write_message(s, EXPORT_TOPIC, job.id, exports=ids, reexport=True)
    return ids


def echo_destination(destination: Destination, *, calling_ae_title: str, timeout: float) -> EchoResult:
    """The connection test of a destination: C-ECHO (DIMSE), or a QIDO-RS search (DICOMweb)."""
    web = web_peer_for(destination)
    if web is not None:
        return web_echo(web, timeout=timeout)
    return c_echo(
        destination.host,
        destination.port,
        destination.title,
        calling_ae_title=calling_ae_title,
        tls=destination.tls,
        timeout=timeout,
    )


@dataclass(frozen=True)
class ExportClaim:
    """This worker now sends export ``export_id`` under ``attempt``."""

    export_id: int
    job_id: int
    attempt: int
    peer: Peer
    files: list[Path]  # relative to the results dir
    outputs: list[str]
    # Set for a DICOMweb destination: the export is sent with STOW-RS, not C-STORE.
    web: WebPeer | None = None


def web_peer_for(destination: Destination) -> WebPeer | None:
    """How to reach a destination of kind "dicomweb" (None for a DIMSE one)."""
    if destination.kind != DestinationKind.DICOMWEB.value:
        return None
    return WebPeer(
        title=destination.title,
        url=destination.url,
        auth=destination.auth,
        username=destination.username,
        password=destination.password,
        token=destination.token,
        verify_tls=destination.verify_tls,
        ca_file=destination.ca_file,
    )


def due_for_job(db: Database, job_id: int, *, stale_after: float, now: dt.datetime | None = None) -> list[int]:
    """Ids of the job's exports that a delivery of its "export" message should try now."""
    now = now or utcnow()
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(Export.id, Export.status, Export.next_attempt_at, Export.updated_at).where(
                Export.job_id == job_id, Export.status.in_(_OPEN)
            )
        ).all()
    out = []
    for export_id, status, next_at, updated in rows:
        if status == ExportStatus.PENDING.value:
            out.append(export_id)
        elif status == ExportStatus.RETRYING.value and (next_at is None or as_utc(next_at) <= now):
            out.append(export_id)
        elif status == ExportStatus.SENDING.value and (now - as_utc(updated)).total_seconds() >= stale_after:
            out.append(export_id)
    return sorted(out)


def claim(db: Database, export_id: int, *, stale_after: float, now: dt.datetime | None = None) -> ExportClaim | None:
    """Claim one export for sending (see the module docstring); None when there is nothing to do."""
    now = now or utcnow()
    with db.session() as s:
        row = s.get(Export, export_id, with_for_update=db.locks_rows)
        if row is None:
            return None
        if (
            row.status == ExportStatus.RETRYING.value
            and row.next_attempt_at is not None
            and as_utc(row.next_attempt_at) > now
        ):
            return None
        if row.status == ExportStatus.SENDING.value and (now - as_utc(row.updated_at)).total_seconds() < stale_after:
            return None
        if row.status not in _OPEN:
            return None
        job = s.get(Job, row.job_id)
        if job is None or job.status != JobStatus.DONE.value:
            # The job is running again (a retry): its end resets this row and queues it anew.
            return None
        newer = s.scalar(
            select(Job.id).where(Job.series_id == job.series_id, Job.id > job.id).order_by(Job.id.desc()).limit(1)
        )
        series = s.get(Series, job.series_id)
        if newer is not None or (series is not None and series.generation > job.generation):
            reason = (
                f"not sent: the series was analysed again (job {newer})" if newer else "not sent: the series re-opened"
            )
            _end(s, row, ExportStatus.FAILED, reason, now)
            return None
        destination = s.get(Destination, row.destination_id) if row.destination_id is not None else None
        if destination is None and row.kind == DestinationKind.DICOMWEB.value:
            # A DIMSE export goes on to the host and port it was made with; a DICOMweb one's URL and
            # credentials went with the destination.
            _end(s, row, ExportStatus.FAILED, "not sent: the DICOMweb destination was removed", now)
            return None
        kinds = set(row.outputs or [])
        files = [Path(o["path"]) for o in (job.outputs or []) if o.get("kind") in kinds]
        row.status = ExportStatus.SENDING.value
        row.attempts = (row.attempts or 0) + 1
        row.updated_at = now
        peer = Peer(row.title, row.host, row.port, tls=bool(destination.tls) if destination is not None else False)
        web = web_peer_for(destination) if destination is not None else None
        return ExportClaim(row.id, job.id, row.attempts, peer, files, sorted(kinds), web)


def touch(db: Database, export_id: int, attempt: int, sent: int) -> None:
    """Progress while sending: the number of objects stored so far (and the progress clock)."""
    with db.session() as s:
        s.execute(
            update(Export)
            .where(Export.id == export_id, Export.attempts == attempt, Export.status == ExportStatus.SENDING.value)
            .values(objects_sent=sent, updated_at=utcnow())
        )


def record(
    db: Database, claim_: ExportClaim, result: SendResult, policy: RetryPolicy, *, now: dt.datetime | None = None
) -> str:
    """End one sending attempt (see the module docstring). Returns the export's new status."""
    now = now or utcnow()
    with db.session() as s:
        row = s.get(Export, claim_.export_id, with_for_update=db.locks_rows)
        if row is None or row.status != ExportStatus.SENDING.value or row.attempts != claim_.attempt:
            return row.status if row is not None else "missing"
        row.objects_sent = result.sent
        if result.outcome is Outcome.SUCCESS:
            _end(s, row, ExportStatus.DONE, "", now)
            job = s.get(Job, row.job_id)
            if job is not None:
                timings = dict(job.timings or {})
                timings["export"] = round(max(float(timings.get("export", 0.0) or 0.0), result.seconds), 4)
                timings.setdefault("export_by_destination", {})[row.title] = round(result.seconds, 4)
                job.timings = timings
        elif result.outcome is Outcome.PERMANENT:
            _end(s, row, ExportStatus.FAILED, f"refused (not retried): {result.reason}", now)
        else:
            delay = backoff_seconds(row.attempts, policy.backoff_base, policy.backoff_cap)
            started = as_utc(row.created_at) or now
            if (now + dt.timedelta(seconds=delay) - started).total_seconds() > policy.max_age:
                hours = (now - started).total_seconds() / 3600
                _end(
                    s,
                    row,
                    ExportStatus.FAILED,
                    f"gave up after {row.attempts} attempts in {hours:.1f} h: {result.reason}",
                    now,
                )
            else:
                row.status = ExportStatus.RETRYING.value
                row.next_attempt_at = now + dt.timedelta(seconds=delay)
                row.last_error = result.reason[:4000]
                row.updated_at = now
                log.warning(
                    "job %d results not sent to %s (attempt %d): %s; trying again in %.0f s",
                    row.job_id,
                    row.title,
                    row.attempts,
                    result.reason,
                    delay,
                )
        return row.status


def record_error(db: Database, claim_: ExportClaim, reason: str, policy: RetryPolicy) -> str:
    """An attempt that could not even try (a result file missing...): retriable, with ``reason``."""
    return record(db, claim_, SendResult(Outcome.RETRIABLE, reason), policy)


def _end(s: Session, row: Export, status: ExportStatus, reason: str, now: dt.datetime) -> None:
    row.status = status.value
    row.last_error = reason[:4000]
    row.finished_at = now
    row.next_attempt_at = None
    row.updated_at = now
    if status is ExportStatus.FAILED:
        log.warning("export %d (job %d) to %s failed for good: %s", row.id, row.job_id, row.title, reason)
        s.add(
            Event(
                level="error",
                category="export",
                message=f"job {row.job_id}: export to {row.title} failed: {reason}"[:2000],
            )
        )


def dispatch_due(db: Database, *, stale_after: float, now: dt.datetime | None = None) -> list[int]:
    """The export scheduler (see the module docstring). Returns the job ids given a message."""
    now = now or utcnow()
    stale = now - dt.timedelta(seconds=stale_after)
    jobs: dict[int, list[int]] = {}
    with db.session() as s:
        due = or_(
            and_(
                Export.status == ExportStatus.RETRYING.value,
                or_(Export.next_attempt_at.is_(None), Export.next_attempt_at <= now),
            ),
            and_(
                Export.status.in_([ExportStatus.PENDING.value, ExportStatus.SENDING.value]), Export.updated_at <= stale
            ),
        )
        for row in s.scalars(select(Export).where(due)).all():
            updated = as_utc(row.updated_at) or now
            if row.status == ExportStatus.RETRYING.value:
                next_at = as_utc(row.next_attempt_at)
                if next_at is not None and next_at > now:
                    continue
            elif updated > stale:
                continue  # queued or sending, and recently so
            elif row.status == ExportStatus.SENDING.value:
                row.last_error = f"attempt {row.attempts} stopped without an answer (worker lost); sending again"
            row.status = ExportStatus.PENDING.value
            row.updated_at = now
            jobs.setdefault(row.job_id, []).append(row.id)
        for job_id, ids in jobs.items():
            write_message(s, EXPORT_TOPIC, job_id, exports=ids)
    return sorted(jobs)
