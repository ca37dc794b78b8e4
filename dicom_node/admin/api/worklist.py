"""The triage worklist, reviews and monitoring in the REST API (dicom_node.triage). Radiologists
and admins write reviews; everyone logged in reads."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from dicom_node.admin.auth import Principal
from dicom_node.admin.deps import client_addr, ctx, principal, reviewer
from dicom_node.triage import monitoring, worklist

router = APIRouter(tags=["Triage"])


@router.get(
    "/worklist", summary="Studies to read, most urgent first (priority, suspicion, waiting). Not for clinical use."
)
def list_worklist(
    request: Request,
    decision: str | None = Query(None, description="covid, cap, normal, indeterminate, no_decision or failed"),
    priority: str | None = Query(None, description="stat, high, routine or low"),
    since: dt.date | None = Query(None, description="last image on or after this day (UTC)"),
    until: dt.date | None = Query(None, description="last image on or before this day (UTC)"),
    show: str = Query("open", pattern="^(open|acknowledged|all)$", description="open: not acknowledged"),
    limit: int = Query(500, ge=1, le=5000),
    who: Principal = Depends(principal),
) -> list[dict[str, Any]]:
    context = ctx(request)
    return worklist.worklist_rows(
        context.db,
        viewer_url=context.settings.triage.viewer_url,
        decision=decision,
        priority=priority,
        since=since,
        until=until,
        show=show,
        limit=limit,
    )


@router.post("/worklist/{job_id}/acknowledge", summary="Mark a finished job's study seen (radiologist or admin)")
def acknowledge(job_id: int, request: Request, who: Principal = Depends(reviewer)) -> dict[str, Any]:
    return worklist.acknowledge(ctx(request).db, job_id, who=who.actor, via=who.via, remote_addr=client_addr(request))


@router.put("/worklist/{job_id}/verdict", summary="Agree, or disagree with the true class (radiologist or admin)")
def give_verdict(
    job_id: int, body: worklist.VerdictIn, request: Request, who: Principal = Depends(reviewer)
) -> dict[str, Any]:
    context = ctx(request)
    review = worklist.give_verdict(
        context.db, job_id, body, who=who.actor, via=who.via, remote_addr=client_addr(request)
    )
    monitoring.check_agreement(context.db, context.settings.triage)
    return review


@router.get("/triage/stats", summary="Agreement with radiologists, time to notification, studies waiting")
def stats(
    request: Request, weeks: int = Query(12, ge=1, le=520), who: Principal = Depends(principal)
) -> dict[str, Any]:
    return monitoring.stats(ctx(request).db, weeks=weeks)
