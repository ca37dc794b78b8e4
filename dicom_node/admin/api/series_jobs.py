"""Series, jobs, exports and events: read them, retry a job, see a finished job's heatmap."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from dicom_node.admin import job_actions
from dicom_node.admin.auth import Principal
from dicom_node.admin.deps import admin, client_addr, ctx, principal
from dicom_node.admin.preview import job_picture_png
from dicom_node.db.models import Event
from dicom_node.jobs.queries import job_detail, job_rows, series_detail, series_rows
from dicom_node.validation import AETitle
from model.contract.notice import NOT_FOR_CLINICAL_USE

router = APIRouter(tags=["Series and jobs"])


@router.get("/series", summary="Series with their latest job's state, newest first")
def list_series(
    request: Request,
    status: str | None = Query(None, description="only series in this state (receiving, not_analysed, or a job state)"),
    limit: int = Query(200, ge=1, le=5000),
    who: Principal = Depends(principal),
) -> list[dict[str, Any]]:
    return series_rows(ctx(request).db, status, limit)


@router.get("/series/{series_id}", summary="One series with all its jobs")
def get_series(series_id: int, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return series_detail(ctx(request).db, series_id)


@router.get("/jobs", summary="Jobs, newest first, with their exports")
def list_jobs(
    request: Request,
    status: str | None = Query(None, description="pending, queued, running, done, failed, superseded"),
    limit: int = Query(200, ge=1, le=5000),
    who: Principal = Depends(principal),
) -> list[dict[str, Any]]:
    return job_rows(ctx(request).db, status=status, limit=limit)


@router.get("/jobs/{job_id}", summary="One job: status, reason, timings, outputs, export state per destination")
def get_job(job_id: int, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    return job_detail(ctx(request).db, job_id)


@router.post("/jobs/{job_id}/retry", status_code=202, summary="Run a finished or failed job again (admin)")
def retry_job(job_id: int, request: Request, who: Principal = Depends(admin)) -> dict[str, Any]:
    return job_actions.retry(ctx(request).db, job_id, who, client_addr(request))


class ResendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: AETitle | None = Field(
        None, description="only to this destination (default: every destination of the job)"
    )


@router.post("/jobs/{job_id}/export", status_code=202, summary="Send a done job's results again (admin)")
def resend(
    job_id: int, request: Request, data: ResendIn | None = None, who: Principal = Depends(admin)
) -> dict[str, Any]:
    context = ctx(request)
    destination = data.destination if data is not None else None
    ids = job_actions.resend(
        context.db,
        job_id,
        who,
        client_addr(request),
        destination=destination,
        default_outputs=context.settings.export.default_outputs,
    )
    return {"job_id": job_id, "exports": ids, "status": "pending"}


@router.get(
    "/jobs/{job_id}/preview",
    summary="A finished job's heatmap overlay (the secondary capture sent to PACS) as PNG. Not for clinical use.",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def preview(
    job_id: int, request: Request, index: int = Query(0, ge=0), who: Principal = Depends(principal)
) -> Response:
    context = ctx(request)
    png = job_picture_png(context.db, context.settings.results_dir, job_id, index)
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, no-store", "X-Notice": NOT_FOR_CLINICAL_USE}
    )


@router.get("/events", summary="What the node reported: refused associations, bad instances, failures")
def list_events(
    request: Request, limit: int = Query(100, ge=1, le=5000), who: Principal = Depends(principal)
) -> list[dict[str, Any]]:
    with ctx(request).db.session() as s:
        rows = s.scalars(select(Event).order_by(Event.id.desc()).limit(limit)).all()
        return [
            {
                "id": e.id,
                "at": e.at,
                "level": e.level,
                "category": e.category,
                "message": e.message,
                "calling_ae": e.calling_ae,
                "calling_host": e.calling_host,
                "local_ae": e.local_ae,
            }
            for e in rows
        ]
