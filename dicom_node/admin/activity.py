"""Series, jobs and exports as the admin app shows them; retries; the heatmap preview.

Reads go to the database only (the listener, completion and worker processes write it). The
preview is the secondary capture the worker wrote for the job (an RGB picture of the slice with the
heatmap burned in), turned into PNG: the admin sees exactly what PACS receives.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import convert_color_space
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import Job, LocalAE, Series
from dicom_node.jobs import analyses, exports
from dicom_node.jobs.queries import iso as _iso
from dicom_node.jobs.queries import job_dict, job_rows, series_rows
from dicom_node.jobs.states import JobStatus
from dicom_node.outputs.kinds import PREVIEW_KIND


def series_list(db: Database, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    return series_rows(db, status, limit)


def job_list(db: Database, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    return job_rows(db, status=status, limit=limit)


def _ae_titles(session: Session) -> dict[int, str]:
    return {a.id: a.title for a in session.scalars(select(LocalAE))}


class NotFound(LookupError):
    """The job, series, export or preview asked for does not exist."""


class Conflict(ValueError):
    """The action does not fit the object's current state (e.g. retrying a running job)."""


def job_detail(db: Database, job_id: int) -> dict[str, Any]:
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        series = job.series
        return job_dict(job, series, _ae_titles(s).get(series.local_ae_id or -1, ""))


def series_detail(db: Database, series_id: int) -> dict[str, Any]:
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
            "first_received_at": _iso(series.first_received_at),
            "last_received_at": _iso(series.last_received_at),
            "completed_at": _iso(series.completed_at),
            "jobs": [job_dict(j, series, local_ae) for j in series.jobs],
        }


def job_counts(db: Database) -> dict[str, int]:
    """Jobs per status (every status, zero included)."""
    with db.engine.connect() as conn:
        counts = dict(conn.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    return {s.value: int(counts.get(s.value, 0)) for s in JobStatus}


def retry_job(db: Database, job_id: int) -> dict[str, Any]:
    """Queue a job's analysis again (it re-runs and re-exports). Refused while it is active.
    Returns the job as it was before, for the audit log."""
    before = job_detail(db, job_id)
    try:
        analyses.requeue(db, job_id, reason="retry requested by an admin")
    except analyses.JobActive as exc:
        raise Conflict(f"{exc}; only a finished job can be retried") from None
    return before


def resend(db: Database, job_id: int, *, default_outputs: Sequence[str], destination: str | None = None) -> list[int]:
    """Send a done job's results again (to every destination, or to the one titled
    ``destination``); returns the export ids."""
    job_detail(db, job_id)  # NotFound when there is no such job
    try:
        return exports.reexport(db, job_id, destination=destination, default_outputs=default_outputs)
    except ValueError as exc:
        raise Conflict(str(exc)) from None


# --- preview -------------------------------------------------------------------------------


def _sc_path(results_dir: Path, job_id: int, output: dict[str, Any]) -> Path:
    """The file of one output entry: Job.outputs paths are relative to the results dir
    (``<job id>/dicom/sc/<uid>.dcm``, see dicom_node.storage.results). Never a path outside results_dir."""
    raw = Path(str(output.get("path", "")))
    root = results_dir.resolve()
    candidates = [raw] if raw.is_absolute() else [results_dir / raw]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_relative_to(root) and resolved.is_file():
            return resolved
    raise NotFound(f"the picture {raw} of job {job_id} is not in {results_dir}")


def rgb_png(ds: pydicom.Dataset) -> bytes:
    """PNG of a secondary capture's pixels (RGB, or monochrome shown as grey)."""
    pixels = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric.startswith("YBR"):
        pixels = convert_color_space(pixels, photometric, "RGB")
    if pixels.ndim == 4:  # multi-frame: the first frame
        pixels = pixels[0]
    elif pixels.ndim == 3 and photometric.startswith("MONOCHROME"):
        pixels = pixels[0]
    if pixels.dtype != np.uint8:
        lo, hi = float(pixels.min()), float(pixels.max())
        pixels = np.rint((pixels.astype(np.float32) - lo) / max(1.0, hi - lo) * 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def preview_png(db: Database, results_dir: Path, job_id: int, index: int = 0) -> bytes:
    """The ``index``-th secondary capture (heatmap overlay) of a finished job as PNG."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        pictures = [o for o in job.outputs or [] if isinstance(o, dict) and o.get("kind") == PREVIEW_KIND]
    if not pictures:
        raise NotFound(f"job {job_id} has no heatmap pictures")
    if not 0 <= index < len(pictures):
        raise NotFound(f"job {job_id} has {len(pictures)} heatmap picture(s); there is no number {index}")
    return rgb_png(pydicom.dcmread(_sc_path(results_dir, job_id, pictures[index])))
