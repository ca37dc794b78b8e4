"""The dashboard, series and jobs (lists that refresh themselves), one job with its exports and
heatmap previews, and the retry button."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.datastructures import FormData
from starlette.responses import Response

from dicom_node.admin import audit, job_actions
from dicom_node.admin.deps import admin, client_addr, ctx, form, principal, render
from dicom_node.admin.health import health
from dicom_node.db.models import Event
from dicom_node.jobs.queries import job_counts, job_detail, job_rows, series_detail, series_rows
from dicom_node.jobs.states import JobStatus, SeriesStatus
from dicom_node.storage.retention import Retention

router = APIRouter()

REFRESH_SECONDS = 3
ROWS = 200  # the newest series or jobs a list page shows
SERIES_STATES = [SeriesStatus.RECEIVING.value, SeriesStatus.NOT_ANALYSED.value] + [s.value for s in JobStatus]


@router.get("/")
def dashboard(request: Request) -> Response:
    principal(request)
    context = ctx(request)
    report = health(context.settings, context.db)
    with context.db.session() as s:
        events = s.scalars(select(Event).order_by(Event.id.desc()).limit(10)).all()
        recent = audit.entries(s, limit=10)
    storage = Retention(context.db, context.settings).usage()
    return render(
        request,
        "dashboard.html",
        {
            "health": report,
            "counts": job_counts(context.db),
            "events": events,
            "audit": recent,
            "storage": storage,
            "retention": context.settings.retention,
        },
    )


@router.get("/series")
def series_page(request: Request, status: str = "") -> Response:
    principal(request)
    rows = series_rows(ctx(request).db, status or None, ROWS)
    return render(
        request,
        "series.html",
        {"rows": rows, "status": status, "states": SERIES_STATES, "refresh_seconds": REFRESH_SECONDS},
    )


@router.get("/series/rows")
def series_rows_fragment(request: Request, status: str = "") -> Response:
    principal(request)
    return render(request, "_series_rows.html", {"rows": series_rows(ctx(request).db, status or None, ROWS)})


@router.get("/series/{series_id}")
def one_series(series_id: int, request: Request) -> Response:
    principal(request)
    return render(request, "series_detail.html", {"series": series_detail(ctx(request).db, series_id)})


@router.get("/jobs")
def jobs_page(request: Request, status: str = "") -> Response:
    principal(request)
    rows = job_rows(ctx(request).db, status=status or None, limit=ROWS)
    flash = request.session.pop("flash", "")
    return render(
        request,
        "jobs.html",
        {
            "rows": rows,
            "status": status,
            "states": [s.value for s in JobStatus],
            "refresh_seconds": REFRESH_SECONDS,
            "flash": flash,
        },
    )


@router.get("/jobs/rows")
def jobs_rows_fragment(request: Request, status: str = "") -> Response:
    principal(request)
    return render(request, "_jobs_rows.html", {"rows": job_rows(ctx(request).db, status=status or None, limit=ROWS)})


@router.get("/jobs/{job_id}")
def one_job(job_id: int, request: Request) -> Response:
    principal(request)
    job = job_detail(ctx(request).db, job_id)
    flash = request.session.pop("flash", "")
    with ctx(request).db.session() as s:
        history = audit.entries(s, target_type="job", target_id=str(job_id), limit=20)
    return render(
        request, "job.html", {"job": job, "flash": flash, "history": history, "refresh_seconds": REFRESH_SECONDS}
    )


@router.post("/jobs/{job_id}/retry")
def retry(job_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    job_actions.retry(ctx(request).db, job_id, who, client_addr(request))
    request.session["flash"] = f"Job {job_id} queued again."
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


@router.post("/jobs/{job_id}/export")
def resend(job_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    context = ctx(request)
    destination = str(data.get("destination", "")) or None
    job_actions.resend(
        context.db,
        job_id,
        who,
        client_addr(request),
        destination=destination,
        default_outputs=context.settings.export.default_outputs,
    )
    request.session["flash"] = f"Results of job {job_id} are being sent again to {destination or 'every destination'}."
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)
