"""The notification state machine in the database: the durable outbox of notifications.

States (dicom_node.jobs.states.NotificationStatus)::

    PENDING --claim--> SENDING --acknowledged--> DONE
       ^                  |----refused for good---------------> FAILED
       |                  +----endpoint down or transient error --> RETRYING --(due)--+
       |                                        |  (beyond the maximum age) --> FAILED
       +---------- a node stopped while sending (recover_interrupted) ----------------+

- :func:`create_for_job` writes the rows in the transaction that ends the job (DONE or FAILED,
  dicom_node.jobs.analyses): one per channel named by an enabled rule that matches the job
  (dicom_node.triage.alerts), keyed by job, attempt and channel, so a run is notified once and a
  re-analysis notifies again. Each row gets its message id (HL7 MSH-10, the webhook's delivery id,
  the e-mail's Message-ID) here, the same on every attempt.
- :func:`claim` moves a due row to SENDING (``attempts`` + 1) and hands the sender what to send;
  :func:`record` ends the attempt: DONE once the endpoint acknowledged it, FAILED at once for a
  refusal, else RETRYING after ``min(cap, base * 2 ** (attempts - 1))`` seconds until the maximum
  age from the job's end, then FAILED. DONE and FAILED are audited (actor ``node``) and shown
  with the job; FAILED also raises an error event.
- A node killed while sending leaves its row SENDING: the next start sends it again
  (:func:`recover_interrupted`), with the same message id. An acknowledged notification is DONE
  in the database before anything else is sent, so it is never sent again; one killed between the
  endpoint's acknowledgement and that commit is sent again with its message id, which the
  endpoint can use to drop the repeat (HL7 receivers do with MSH-10).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import (
    AuditEntry,
    Event,
    Job,
    LocalAE,
    Notification,
    NotificationChannel,
    NotificationRule,
    Series,
)
from dicom_node.db.times import as_utc, utcnow
from dicom_node.jobs.exports import RetryPolicy, backoff_seconds
from dicom_node.jobs.states import JobStatus, NotificationStatus
from dicom_node.triage.alerts import JobFacts, NotifyConditions, matches

log = logging.getLogger(__name__)

ACTOR = "node"
_OPEN = [NotificationStatus.PENDING.value, NotificationStatus.RETRYING.value]


def message_id(row_id: int) -> str:
    """A notification's identity at its endpoint (at most 20 characters: HL7 MSH-10 of v2.3)."""
    return f"DNN{row_id:010d}"


def create_for_job(s: Session, job: Job, series: Series | None, now: dt.datetime | None = None) -> list[Notification]:
    """Write the job's notifications in the caller's transaction (see the module docstring)."""
    now = now or utcnow()
    outcome = "failed" if job.status == JobStatus.FAILED.value else job.decision
    local_ae = None
    if series is not None and series.local_ae_id is not None:
        local_ae = s.get(LocalAE, series.local_ae_id)
    facts = JobFacts(
        outcome=outcome,
        priority=int(job.priority),
        probabilities=dict((job.result or {}).get("probabilities") or {}),
        local_ae=local_ae.title if local_ae is not None else "",
    )
    channels: dict[int, tuple[NotificationChannel, list[str]]] = {}
    for rule in s.scalars(
        select(NotificationRule).where(NotificationRule.enabled.is_(True)).order_by(NotificationRule.id)
    ):
        if not matches(NotifyConditions.from_json(rule.conditions), facts):
            continue
        for channel in rule.channels:
            if channel.enabled:
                channels.setdefault(channel.id, (channel, []))[1].append(rule.name)
    rows = []
    for channel_id, (channel, rules) in sorted(channels.items()):
        key = f"{job.id}:{job.attempts}:{channel_id}"
        if s.scalar(select(Notification.id).where(Notification.key == key)) is not None:
            continue
        row = Notification(
            job_id=job.id,
            channel_id=channel_id,
            key=key,
            channel=channel.name,
            kind=channel.kind,
            rules=rules,
            status=NotificationStatus.PENDING.value,
            created_at=now,
            updated_at=now,
        )
        s.add(row)
        s.flush()
        row.message_id = message_id(row.id)
        rows.append(row)
    if rows:
        log.debug("job %d: %d notification(s) queued", job.id, len(rows))
    return rows


def due(db: Database, *, now: dt.datetime | None = None, limit: int = 100) -> list[int]:
    """Ids of the notifications to send now, oldest first."""
    now = now or utcnow()
    with db.engine.connect() as conn:
        return list(
            conn.scalars(
                select(Notification.id)
                .where(
                    or_(
                        Notification.status == NotificationStatus.PENDING.value,
                        and_(
                            Notification.status == NotificationStatus.RETRYING.value,
                            or_(Notification.next_attempt_at.is_(None), Notification.next_attempt_at <= now),
                        ),
                    )
                )
                .order_by(Notification.id)
                .limit(limit)
            )
        )


@dataclass(frozen=True)
class NotificationClaim:
    id: int
    job_id: int
    attempt: int
    kind: str
    channel: str
    settings: dict[str, Any]
    message_id: str
    job: Job
    series: Series
    local_ae: str


def claim(db: Database, notification_id: int, *, now: dt.datetime | None = None) -> NotificationClaim | None:
    """Claim a due notification for sending; None when there is nothing to do (or its channel is
    gone or switched off: then it fails for good, saying so)."""
    now = now or utcnow()
    with db.session() as s:
        row = s.get(Notification, notification_id, with_for_update=db.locks_rows)
        if row is None or row.status not in _OPEN:
            return None
        if row.next_attempt_at is not None and as_utc(row.next_attempt_at) > now:
            return None
        channel = s.get(NotificationChannel, row.channel_id) if row.channel_id is not None else None
        if channel is None or not channel.enabled:
            _end(s, row, NotificationStatus.FAILED, f"not sent: channel {row.channel} is gone or disabled", now)
            return None
        job = s.get(Job, row.job_id)
        series = s.get(Series, job.series_id) if job is not None else None
        if job is None or series is None:
            return None
        local_ae = s.get(LocalAE, series.local_ae_id) if series.local_ae_id is not None else None
        row.status = NotificationStatus.SENDING.value
        row.attempts = (row.attempts or 0) + 1
        row.updated_at = now
        s.flush()
        s.expunge(job)
        s.expunge(series)
        return NotificationClaim(
            id=row.id,
            job_id=row.job_id,
            attempt=row.attempts,
            kind=channel.kind,
            channel=channel.name,
            settings=dict(channel.settings or {}),
            message_id=row.message_id,
            job=job,
            series=series,
            local_ae=local_ae.title if local_ae is not None else "",
        )


def record(
    db: Database,
    claim_: NotificationClaim,
    outcome: str,
    detail: str,
    policy: RetryPolicy,
    *,
    now: dt.datetime | None = None,
) -> str:
    """End a sending attempt with ``outcome`` "done", "permanent" or "retry" (see the module
    docstring). Returns the notification's new status."""
    now = now or utcnow()
    with db.session() as s:
        row = s.get(Notification, claim_.id, with_for_update=db.locks_rows)
        if row is None or row.status != NotificationStatus.SENDING.value or row.attempts != claim_.attempt:
            return row.status if row is not None else "missing"
        if outcome == "done":
            row.response = detail[:2000]
            row.delivered_at = now
            _end(s, row, NotificationStatus.DONE, "", now)
        elif outcome == "permanent":
            _end(s, row, NotificationStatus.FAILED, f"refused (not sent again): {detail}", now)
        else:
            delay = backoff_seconds(row.attempts, policy.backoff_base, policy.backoff_cap)
            started = as_utc(row.created_at) or now
            if (now + dt.timedelta(seconds=delay) - started).total_seconds() > policy.max_age:
                hours = (now - started).total_seconds() / 3600
                _end(
                    s,
                    row,
                    NotificationStatus.FAILED,
                    f"gave up after {row.attempts} attempts in {hours:.1f} h: {detail}",
                    now,
                )
            else:
                row.status = NotificationStatus.RETRYING.value
                row.next_attempt_at = now + dt.timedelta(seconds=delay)
                row.last_error = detail[:4000]
                row.updated_at = now
                log.warning(
                    "job %d: notification to %s not delivered (attempt %d): %s; trying again in %.0f s",
                    row.job_id,
                    row.channel,
                    row.attempts,
                    detail,
                    delay,
                )
        return row.status


def recover_interrupted(db: Database, *, now: dt.datetime | None = None) -> int:
    """Notifications left SENDING by a node that stopped (or was killed) while sending: due again
    now. Called once when the sender starts (it is the only one of the node)."""
    now = now or utcnow()
    with db.session() as s:
        result = s.execute(
            update(Notification)
            .where(Notification.status == NotificationStatus.SENDING.value)
            .values(
                status=NotificationStatus.RETRYING.value,
                next_attempt_at=now,
                last_error="the node stopped while sending; sent again with the same message id",
                updated_at=now,
            )
        )
        count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        log.warning("%d notification(s) were being sent when the node stopped; sending them again", count)
    return count


def _end(s: Session, row: Notification, status: NotificationStatus, reason: str, now: dt.datetime) -> None:
    row.status = status.value
    row.last_error = reason[:4000]
    row.finished_at = now
    row.next_attempt_at = None
    row.updated_at = now
    failed = status is NotificationStatus.FAILED
    s.add(
        AuditEntry(
            actor=ACTOR,
            via="notifier",
            action="notification.failed" if failed else "notification.delivered",
            target_type="job",
            target_id=str(row.job_id),
            target=row.channel,
            after={
                "notification": row.id,
                "kind": row.kind,
                "message_id": row.message_id,
                "attempts": row.attempts,
                "response": row.response,
                "error": row.last_error,
            },
        )
    )
    if failed:
        log.warning("job %d: notification to %s failed for good: %s", row.job_id, row.channel, reason)
        s.add(
            Event(
                level="error",
                category="notification",
                message=f"job {row.job_id}: notification to {row.channel} failed: {reason}"[:2000],
            )
        )
