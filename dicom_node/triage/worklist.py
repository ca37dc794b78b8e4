"""The triage worklist: the analysed studies a radiologist reads first, and their reviews.

Each row is the newest job of a series (superseded ones left out), ordered by priority (stat
first), then suspicion (the model's probability of pneumonia, ``1 - p(normal)``; none for a
failed or undecided analysis), then waiting time (the oldest last image first). Rows carry what
the page shows: patient, accession, decision, probabilities, lung involvement, time since the
last image, the heatmap picture, the viewer link (``triage.viewer_url``), and the review.

A review (dicom_node.db.models.Review, one per job) is an acknowledgement (the study was seen)
and a verdict: ``agree``, or ``disagree`` with the true class. Each is audited in its transaction
(``review.acknowledge``, ``review.verdict``); a verdict acknowledges too. A verdict may be
changed (the audit log keeps each one).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import AuditEntry, Job, LocalAE, Review, Series
from dicom_node.db.times import as_utc, utcnow
from dicom_node.errors import Conflict, NotFound
from dicom_node.jobs.queries import iso, job_dict
from dicom_node.jobs.states import JobStatus
from dicom_node.triage.priority import Priority
from dicom_node.triage.viewer import viewer_link

TRUE_CLASSES = ("covid", "cap", "normal")
SHOW = ("open", "acknowledged", "all")


class VerdictIn(BaseModel):
    """A radiologist's verdict on one result."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["agree", "disagree"]
    true_class: Literal["covid", "cap", "normal"] | None = Field(
        default=None, description="with disagree: what the study shows"
    )
    comment: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _class(self) -> "VerdictIn":
        if self.verdict == "disagree" and self.true_class is None:
            raise ValueError("true_class: say what the study shows when you disagree (covid, cap or normal)")
        return self


def suspicion(job: dict[str, Any]) -> float | None:
    """How strongly the model suspects pneumonia: 1 - p(normal); None without probabilities."""
    p = job.get("probabilities") or {}
    if job.get("status") != JobStatus.DONE.value or "normal" not in p:
        return None
    return round(1.0 - float(p["normal"]), 4)


def review_dict(row: Review | None) -> dict[str, Any]:
    if row is None:
        return {"acknowledged_by": "", "acknowledged_at": None, "verdict": "", "true_class": "", "comment": ""}
    return {
        "acknowledged_by": row.acknowledged_by,
        "acknowledged_at": iso(row.acknowledged_at),
        "verdict": row.verdict,
        "true_class": row.true_class,
        "comment": row.comment,
        "verdict_by": row.verdict_by,
        "verdict_at": iso(row.verdict_at),
    }


def worklist_rows(
    db: Database,
    *,
    viewer_url: str | None = None,
    decision: str | None = None,
    priority: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
    show: str = "open",
    limit: int = 500,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """The worklist (see the module docstring). ``decision`` and ``priority`` filter; ``since``
    and ``until`` (dates, UTC, both included) bound the last image; ``show``: ``open`` (not
    acknowledged), ``acknowledged`` or ``all``."""
    now = now or utcnow()
    with db.session() as s:
        newest = (
            select(func.max(Job.id))
            .where(Job.status != JobStatus.SUPERSEDED.value)
            .group_by(Job.series_id)
            .scalar_subquery()
        )
        query = select(Job, Series).join(Series, Series.id == Job.series_id).where(Job.id.in_(newest))
        if priority:
            query = query.where(Job.priority == int(Priority.parse(priority)))
        if decision == "failed":
            query = query.where(Job.status == JobStatus.FAILED.value)
        elif decision:
            query = query.where(Job.decision == decision, Job.status == JobStatus.DONE.value)
        if since is not None:
            query = query.where(Series.last_received_at >= dt.datetime.combine(since, dt.time(), dt.timezone.utc))
        if until is not None:
            end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
            query = query.where(Series.last_received_at < end)
        pairs = s.execute(query.order_by(Job.priority.desc(), Series.last_received_at).limit(limit)).all()
        titles = {a.id: a.title for a in s.scalars(select(LocalAE))}
        ids = [job.id for job, _ in pairs]
        reviews = {r.job_id: r for r in s.scalars(select(Review).where(Review.job_id.in_(ids)))} if ids else {}
        rows = []
        for job, series in pairs:
            review = reviews.get(job.id)
            acknowledged = review is not None and review.acknowledged_at is not None
            if (show == "open" and acknowledged) or (show == "acknowledged" and not acknowledged):
                continue
            row = job_dict(job, series, titles.get(series.local_ae_id or -1, ""), exports=[])
            last = as_utc(series.last_received_at)
            row.update(
                suspicion=suspicion(row),
                last_image_at=iso(last),
                waiting_seconds=max(0.0, (now - last).total_seconds()) if last else None,
                viewer_url=viewer_link(viewer_url, row),
                has_picture=row["output_counts"].get("sc", 0) > 0,
                review=review_dict(review),
            )
            rows.append(row)
    rows.sort(key=_order)
    return rows


def _order(row: dict[str, Any]) -> tuple[float, float, str]:
    rank = int(Priority.parse(row["priority"])) if row["priority"] in ("stat", "high", "routine", "low") else 1
    return (-rank, -(row["suspicion"] if row["suspicion"] is not None else -1.0), row["last_image_at"] or "")


def _review(s: Session, job_id: int) -> tuple[Job, Review]:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    if job.status not in (JobStatus.DONE.value, JobStatus.FAILED.value):
        raise Conflict(f"job {job_id} is {job.status}: only a finished job's result can be reviewed")
    row = s.scalar(select(Review).where(Review.job_id == job_id))
    if row is None:
        row = Review(job_id=job_id)
        s.add(row)
    return job, row


def _audit(
    s: Session, who: str, via: str, action: str, job: Job, before: dict[str, Any], row: Review, addr: str
) -> None:
    s.flush()
    s.add(
        AuditEntry(
            actor=who[:100],
            via=via[:32],
            action=action,
            target_type="job",
            target_id=str(job.id),
            target=f"{job.decision or job.status} result of job {job.id}"[:200],
            before=before,
            after=review_dict(row),
            remote_addr=addr[:64],
        )
    )


def acknowledge(db: Database, job_id: int, *, who: str, via: str = "web", remote_addr: str = "") -> dict[str, Any]:
    """Mark a finished job's study seen (again: a no-op). Returns the review."""
    with db.session() as s:
        job, row = _review(s, job_id)
        if row.acknowledged_at is not None:
            return review_dict(row)
        before = review_dict(row)
        row.acknowledged_by, row.acknowledged_at = who[:100], utcnow()
        _audit(s, who, via, "review.acknowledge", job, before, row, remote_addr)
        return review_dict(row)


def give_verdict(
    db: Database, job_id: int, verdict: VerdictIn, *, who: str, via: str = "web", remote_addr: str = ""
) -> dict[str, Any]:
    """Record a verdict on a finished job's result (acknowledging it). Returns the review."""
    with db.session() as s:
        job, row = _review(s, job_id)
        if verdict.verdict == "agree" and job.decision not in TRUE_CLASSES:
            raise Conflict(
                f"job {job_id}'s result is {job.decision or job.status}: disagree, and say what the study shows"
            )
        before = review_dict(row)
        now = utcnow()
        if row.acknowledged_at is None:
            row.acknowledged_by, row.acknowledged_at = who[:100], now
        row.verdict = verdict.verdict
        row.true_class = job.decision if verdict.verdict == "agree" else str(verdict.true_class)
        row.comment = verdict.comment
        row.verdict_by, row.verdict_at = who[:100], now
        _audit(s, who, via, "review.verdict", job, before, row, remote_addr)
        return review_dict(row)
