"""The triage worklist for radiologists (and admins; viewers read it): studies by priority, then
suspicion, then waiting time, refreshing itself while open; acknowledging a study and giving a
verdict; each study's heatmap picture; and the monitoring page with its charts
(dicom_node.triage.worklist, dicom_node.triage.monitoring)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData
from starlette.responses import Response

from dicom_node.admin.deps import client_addr, ctx, form, principal, render, reviewer
from dicom_node.admin.preview import job_picture_png
from dicom_node.configuration import parse
from dicom_node.triage import monitoring, worklist
from dicom_node.triage.priority import LEVELS
from model.contract.notice import NOT_FOR_CLINICAL_USE

router = APIRouter()

REFRESH_SECONDS = 3
DECISIONS = ("covid", "cap", "normal", "indeterminate", "no_decision", "failed")


def _date(value: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _filters(decision: str, priority: str, since: str, until: str, show: str) -> dict[str, Any]:
    return {
        "decision": decision if decision in DECISIONS else "",
        "priority": priority if priority in LEVELS else "",
        "since": since if _date(since) else "",
        "until": until if _date(until) else "",
        "show": show if show in worklist.SHOW else "open",
    }


def _rows(request: Request, f: dict[str, Any]) -> list[dict[str, Any]]:
    context = ctx(request)
    return worklist.worklist_rows(
        context.db,
        viewer_url=context.settings.triage.viewer_url,
        decision=f["decision"] or None,
        priority=f["priority"] or None,
        since=_date(f["since"]),
        until=_date(f["until"]),
        show=f["show"],
    )


@router.get("/worklist")
def worklist_page(
    request: Request, decision: str = "", priority: str = "", since: str = "", until: str = "", show: str = "open"
) -> Response:
    principal(request)
    f = _filters(decision, priority, since, until, show)
    query = "&".join(f"{k}={v}" for k, v in f.items())
    return render(
        request,
        "worklist.html",
        {
            "rows": _rows(request, f),
            "filters": f,
            "query": query,
            "decisions": DECISIONS,
            "levels": LEVELS,
            "shows": worklist.SHOW,
            "refresh_seconds": REFRESH_SECONDS,
            "flash": request.session.pop("flash", ""),
        },
    )


@router.get("/worklist/rows")
def worklist_rows_fragment(
    request: Request, decision: str = "", priority: str = "", since: str = "", until: str = "", show: str = "open"
) -> Response:
    principal(request)
    f = _filters(decision, priority, since, until, show)
    return render(request, "_worklist_rows.html", {"rows": _rows(request, f), "query": ""})


@router.get("/worklist/{job_id}/picture")
def picture(job_id: int, request: Request, index: int = Query(0, ge=0)) -> Response:
    principal(request)
    context = ctx(request)
    png = job_picture_png(context.db, context.settings.results_dir, job_id, index)
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, no-store", "X-Notice": NOT_FOR_CLINICAL_USE}
    )


def _back(data: FormData) -> str:
    target = str(data.get("back", ""))
    return target if target.startswith("/worklist") else "/worklist"


@router.post("/worklist/{job_id}/acknowledge")
def acknowledge(job_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = reviewer(request)
    worklist.acknowledge(ctx(request).db, job_id, who=who.actor, via=who.via, remote_addr=client_addr(request))
    request.session["flash"] = f"Job {job_id} acknowledged."
    return RedirectResponse(_back(data), status_code=303)


@router.post("/worklist/{job_id}/verdict")
def verdict(job_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = reviewer(request)
    given = parse(
        worklist.VerdictIn,
        {
            "verdict": str(data.get("verdict", "")),
            "true_class": str(data.get("true_class", "")) or None,
            "comment": str(data.get("comment", "")),
        },
    )
    context = ctx(request)
    worklist.give_verdict(context.db, job_id, given, who=who.actor, via=who.via, remote_addr=client_addr(request))
    monitoring.check_agreement(context.db, context.settings.triage)
    request.session["flash"] = f"Verdict on job {job_id} saved: {given.verdict}."
    return RedirectResponse(_back(data), status_code=303)


@router.get("/triage")
def monitoring_page(request: Request) -> Response:
    principal(request)
    return render(request, "triage.html", {"stats": monitoring.stats(ctx(request).db), "charts": monitoring.CHARTS})


@router.get("/triage/charts/{name}.png")
def chart(name: str, request: Request) -> Response:
    principal(request)
    if name not in monitoring.CHARTS:
        return Response(status_code=404)
    png = monitoring.chart(name, monitoring.stats(ctx(request).db))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})
