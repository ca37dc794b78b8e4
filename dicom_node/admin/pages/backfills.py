"""Backfills in the admin pages (admins only): the list with each one's progress and a form to
start one (/backfills), one backfill's series and what became of each (/backfills/{id}), and
cancel. A backfill started here is run by ``serve`` (dicom_node.pipeline.backfill.run_next), which
resumes it after a restart; one started on the command line is run by that command."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from dicom_node.admin.deps import admin, ctx, form, render
from dicom_node.db.models import Destination, LocalAE
from dicom_node.errors import NodeError, Refused
from dicom_node.jobs import backfills
from dicom_node.jobs.states import OPEN_BACKFILL_STATUSES, BackfillStatus
from dicom_node.pipeline import backfill as work

router = APIRouter()

# The form's field of each Refused's field (the command line's names).
FORM_FIELD = {"from": "date_from", "to": "date_to", "retrieve": "method"}
FIELDS = ("source", "date_from", "date_to", "modality", "accessions", "local_ae", "method", "rate", "between")


def _page(
    request: Request,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    db = ctx(request).db
    with db.session() as s:
        sources = list(s.scalars(select(Destination.title).order_by(Destination.title)))
        local_aes = list(s.scalars(select(LocalAE.title).order_by(LocalAE.title)))
    return render(
        request,
        "backfills.html",
        {
            "backfills": backfills.backfills(db),
            "sources": sources,
            "local_aes": local_aes,
            "methods": work.METHODS,
            "errors": errors or {},
            "values": values or {},
            "open_statuses": [st.value for st in OPEN_BACKFILL_STATUSES],
        },
        status_code=status_code,
    )


@router.get("/backfills")
def backfills_page(request: Request) -> Response:
    admin(request)
    return _page(request)


@router.post("/backfills")
def start(request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    values = {k: str(data.get(k, "")).strip() for k in FIELDS}
    force = data.get("force") is not None
    db = ctx(request).db
    try:
        prepared = work.prepare(
            db,
            source=values["source"],
            date_from=values["date_from"],
            date_to=values["date_to"],
            modality=values["modality"],
            accessions=values["accessions"].split(),
            local_ae=values["local_ae"],
            method=values["method"],
            rate=values["rate"],
            between=values["between"],
            force=force,
            created_by=who.name,
        )
    except Refused as exc:
        field = FORM_FIELD.get(exc.field or "", exc.field) if exc.field in FORM_FIELD or exc.field in FIELDS else None
        return _page(request, errors={field or "general": exc.reason}, values=values, status_code=422)
    except NodeError as exc:
        return _page(request, errors={"general": exc.one_line()}, values=values, status_code=422)
    backfill_id = backfills.create(db, run_by="serve", **prepared)
    request.session["flash"] = f"Backfill {backfill_id} started: serve queries {prepared['source']} now."
    return RedirectResponse(f"/backfills/{backfill_id}", status_code=303)


@router.get("/backfills/{backfill_id}")
def backfill_page(backfill_id: int, request: Request) -> Response:
    admin(request)
    db = ctx(request).db
    return render(
        request,
        "backfill.html",
        {
            "b": backfills.progress(db, backfill_id),
            "rows": backfills.series_rows(db, backfill_id),
            "open_statuses": [st.value for st in OPEN_BACKFILL_STATUSES],
        },
    )


@router.post("/backfills/{backfill_id}/cancel")
def cancel(backfill_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    db = ctx(request).db
    state = backfills.get(db, backfill_id)
    if state["status"] in {st.value for st in OPEN_BACKFILL_STATUSES}:
        backfills.finish(db, backfill_id, BackfillStatus.CANCELLED, f"cancelled by {who.name}")
        request.session["flash"] = f"Backfill {backfill_id} cancelled; what it retrieved is analysed."
    return RedirectResponse(f"/backfills/{backfill_id}", status_code=303)
