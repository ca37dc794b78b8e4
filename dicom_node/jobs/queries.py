"""The read model of what happened: series, jobs and exports as the command line prints them
and the admin app shows them. One serialisation, so `series list --json`, `jobs list --json`
and the REST API agree."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import Export, Job, LocalAE, Notification, Series
from dicom_node.db.times import as_utc
from dicom_node.errors import NotFound
from dicom_node.jobs.states import JobStatus, SeriesStatus
from dicom_node.triage.priority import Priority
from model.contract.notice import NOT_FOR_CLINICAL_USE


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite returns naive datetimes; everything stored is UTC)."""
    if value is None:
        return None
    return as_utc(value).isoformat()


def _ae_titles(session: Session) -> dict[int, str]:
    return {a.id: a.title for a in session.scalars(select(LocalAE))}


def series_rows(db: Database, status: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Series with the state of their latest job, newest first: ``series list --json`` and the
    admin app."""
    with db.session() as s:
        q = select(Series).order_by(Series.last_received_at.desc()).limit(limit)
        rows = s.scalars(q).all()
        ae_titles = _ae_titles(s)
        out = []
        for r in rows:
            job = s.scalar(select(Job).where(Job.series_id == r.id).order_by(Job.id.desc()).limit(1))
            effective = r.status
            reason = r.reason
            if r.status == SeriesStatus.COMPLETE.value and job is not None:
                effective = job.status
                reason = job.reason
            if status and effective != status:
                continue
            out.append(
                {
                    "id": r.id,
                    "study_uid": r.study_uid,
                    "series_uid": r.series_uid,
                    "patient_id": r.patient_id,
                    "modality": r.modality,
                    "series_description": r.series_description,
                    "instances": r.instances,
                    "frames": r.frames,
                    "status": effective,
                    "series_status": r.status,
                    "reason": reason,
                    "local_ae": ae_titles.get(r.local_ae_id or -1, ""),
                    "calling_ae": r.calling_ae,
                    "generation": r.generation,
                    "first_received_at": iso(r.first_received_at),
                    "last_received_at": iso(r.last_received_at),
                    "completed_at": iso(r.completed_at),
                    "job_id": job.id if job else None,
                    "decision": job.decision if job else "",
                }
            )
    return out


def export_dict(row: Export) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "destination_id": row.destination_id,
        "destination": row.title,
        "key": row.destination_key,
        "host": row.host,
        "port": row.port,
        "outputs": list(row.outputs or []),
        "status": row.status,
        "attempts": row.attempts,
        "objects_sent": row.objects_sent,
        "next_attempt_at": iso(row.next_attempt_at),
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "finished_at": iso(row.finished_at),
    }


def priority_label(value: int | None) -> str:
    """A stored priority as people read it (stat, high, routine, low)."""
    try:
        return Priority(int(value if value is not None else Priority.ROUTINE)).label
    except ValueError:
        return str(value)


def notification_dict(row: Notification) -> dict[str, Any]:
    return {
        "id": row.id,
        "channel": row.channel,
        "kind": row.kind,
        "rules": list(row.rules or []),
        "message_id": row.message_id,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at),
        "last_error": row.last_error,
        "response": row.response,
        "created_at": iso(row.created_at),
        "delivered_at": iso(row.delivered_at),
    }


def key_sop_uid(result: dict[str, Any]) -> str:
    """The SOP Instance UID of a stored result's first key slice (its strongest finding, where its
    SR shows the classification); "" without one (no finding, no result)."""
    keys = result.get("key_slices") or []
    uids = result.get("sop_instance_uids") or []
    if keys and isinstance(keys[0], int) and 0 <= keys[0] < len(uids):
        return str(uids[keys[0]])
    return ""


def job_dict(
    job: Job,
    series: Series,
    local_ae: str = "",
    exports: list[Export] | None = None,
    notifications: list[Notification] | None = None,
) -> dict[str, Any]:
    result = job.result or {}
    outputs = [o for o in job.outputs or [] if isinstance(o, dict)]
    counts: dict[str, int] = {}
    for o in outputs:
        counts[o.get("kind", "?")] = counts.get(o.get("kind", "?"), 0) + 1
    return {
        "id": job.id,
        "series_id": series.id,
        "series_uid": series.series_uid,
        "study_uid": series.study_uid,
        "series_description": series.series_description,
        "patient_id": series.patient_id,
        "patient_name": series.patient_name,
        "accession_number": series.accession_number,
        "study_description": series.study_description,
        "local_ae": local_ae,
        "calling_ae": series.calling_ae,
        "instances": series.instances,
        "generation": job.generation,
        "status": job.status,
        "reason": job.reason,
        "priority": priority_label(job.priority),
        "priority_reason": job.priority_reason,
        "attempts": job.attempts,
        "worker": job.worker,
        "created_at": iso(job.created_at),
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "model": {"name": job.model_name, "version": job.model_version},
        "decision": job.decision,
        "probabilities": dict(result.get("probabilities") or {}),
        "result_reason": result.get("reason", ""),
        "lung_involvement_percent": result.get("lung_involvement_percent"),
        "key_sop_uid": key_sop_uid(result),
        "timings": dict(job.timings or {}),
        "outputs": outputs,
        "output_counts": counts,
        # Output kinds not built for this job, and why (dicom_node.pipeline.analyse).
        "left_out": dict(result.get("left_out") or {}),
        "exports": [export_dict(e) for e in (exports if exports is not None else job.exports)],
        "notifications": [notification_dict(n) for n in notifications or []],
        "notice": NOT_FOR_CLINICAL_USE,
    }


def job_rows(
    db: Database, *, status: str | None = None, job_ids: list[int] | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Jobs, newest first, with their series and the state of their exports per destination."""
    with db.session() as s:
        q = select(Job, Series).join(Series, Series.id == Job.series_id).order_by(Job.id.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status)
        if job_ids is not None:
            q = q.where(Job.id.in_(job_ids))
        pairs = s.execute(q).all()
        titles = _ae_titles(s)
        by_job: dict[int, list[Export]] = {job.id: [] for job, _ in pairs}
        told: dict[int, list[Notification]] = {job.id: [] for job, _ in pairs}
        if by_job:
            for e in s.scalars(select(Export).where(Export.job_id.in_(list(by_job))).order_by(Export.id)):
                by_job[e.job_id].append(e)
            for n in s.scalars(
                select(Notification).where(Notification.job_id.in_(list(by_job))).order_by(Notification.id)
            ):
                told[n.job_id].append(n)
        return [
            job_dict(job, series, titles.get(series.local_ae_id or -1, ""), by_job[job.id], told[job.id])
            for job, series in pairs
        ]


def job_detail(db: Database, job_id: int) -> dict[str, Any]:
    """One job with its series and exports; NotFound without it."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        series = job.series
        told = list(s.scalars(select(Notification).where(Notification.job_id == job_id).order_by(Notification.id)))
        return job_dict(job, series, _ae_titles(s).get(series.local_ae_id or -1, ""), notifications=told)


def series_detail(db: Database, series_id: int) -> dict[str, Any]:
    """One series with all its jobs; NotFound without it."""
    with db.session() as s:
        series = s.get(Series, series_id)
        if series is None:
            raise NotFound(f"no series with id {series_id}")
        local_ae = _ae_titles(s).get(series.local_ae_id or -1, "")
        return {
            "id": series.id,
            "series_uid": series.series_uid,
            "study_uid": series.study_uid,
            "patient_id": series.patient_id,
            "modality": series.modality,
            "body_part": series.body_part,
            "series_description": series.series_description,
            "series_number": series.series_number,
            "instances": series.instances,
            "frames": series.frames,
            "status": series.status,
            "reason": series.reason,
            "generation": series.generation,
            "local_ae": local_ae,
            "calling_ae": series.calling_ae,
            "calling_host": series.calling_host,
            "first_received_at": iso(series.first_received_at),
            "last_received_at": iso(series.last_received_at),
            "completed_at": iso(series.completed_at),
            "jobs": [job_dict(j, series, local_ae) for j in series.jobs],
        }


def job_counts(db: Database) -> dict[str, int]:
    """Jobs per status (every status, zero included)."""
    with db.engine.connect() as conn:
        counts = dict(conn.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return {s.value: int(counts.get(s.value, 0)) for s in JobStatus}


def running_series(db: Database) -> list[tuple[str, str]]:
    """(series UID, worker "host:pid") of every running job."""
    with db.reader() as conn:
        rows = conn.execute(
            select(Series.series_uid, Job.worker)
            .join(Job, Job.series_id == Series.id)
            .where(Job.status == JobStatus.RUNNING.value)
        ).all()
    return [(uid, worker) for uid, worker in rows]
