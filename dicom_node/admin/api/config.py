"""CRUD routes for local AEs, sources and destinations, and the C-ECHO test of a destination.

The request bodies are dicom_node.configuration's schemas, so a bad field is answered 422 naming
it, with the same reason as the command line gives. Changes are audited in their transaction.
"""

# No ``from __future__ import annotations`` here: the routes are built per kind and FastAPI reads
# their body types from the annotations at run time.

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlalchemy import select

from dicom_node.admin import audit
from dicom_node.admin.auth import Principal
from dicom_node.admin.config_kinds import ConfigKind
from dicom_node.admin.deps import admin, client_addr, ctx, principal
from dicom_node.db.models import Destination
from dicom_node.jobs.exports import echo_destination
from dicom_node.sending.echo import EchoResult


def echo_saved_destination(request: Request, item_id: int) -> EchoResult:
    """The connection test of destination ``item_id`` as saved (C-ECHO; a DICOMweb one: a QIDO-RS
    search), from the node's calling AE, for the API and the destination's page; 404 if it is gone."""
    context = ctx(request)
    with context.db.session() as s:
        row = s.get(Destination, item_id)
        if row is None:
            raise HTTPException(404, f"no destination with id {item_id}")
        s.expunge(row)
    return echo_destination(
        row,
        calling_ae_title=context.settings.export.calling_ae_title,
        timeout=min(context.settings.export.timeout_seconds, 10.0),
    )


def config_router(kind: ConfigKind) -> APIRouter:
    """GET/POST /api/<slug>, GET/PATCH/DELETE /api/<slug>/{id}."""
    router = APIRouter(prefix=f"/{kind.slug}", tags=[kind.plural])
    create_schema = kind.create_schema
    patch_schema = kind.patch_schema
    out_schema = kind.out_schema

    def load(session: Any, item_id: int) -> Any:
        row = session.get(kind.model, item_id)
        if row is None:
            raise HTTPException(404, f"no {kind.label} with id {item_id}")
        return row

    def list_items(request: Request, who: Principal = Depends(principal)) -> list[dict[str, Any]]:
        with ctx(request).db.session() as s:
            return [kind.to_dict(r) for r in s.scalars(select(kind.model).order_by(kind.model.title, kind.model.id))]

    def get_item(item_id: int, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        with ctx(request).db.session() as s:
            return kind.to_dict(load(s, item_id))

    def create_item(data: create_schema, request: Request, who: Principal = Depends(admin)) -> dict[str, Any]:  # type: ignore[valid-type]  # a schema class chosen at run time: FastAPI reads the annotation, mypy can not
        with ctx(request).db.session() as s:
            audit.watch(s, who, client_addr(request))
            return kind.to_dict(kind.add(s, data, ctx(request).settings))

    # A schema class chosen at run time: FastAPI reads the annotation, mypy can not.
    def update_item(
        item_id: int,
        data: patch_schema,  # type: ignore[valid-type]
        request: Request,
        who: Principal = Depends(admin),
    ) -> dict[str, Any]:
        with ctx(request).db.session() as s:
            audit.watch(s, who, client_addr(request))
            return kind.to_dict(kind.update(s, load(s, item_id), data))

    def delete_item(item_id: int, request: Request, who: Principal = Depends(admin)) -> Response:
        with ctx(request).db.session() as s:
            audit.watch(s, who, client_addr(request))
            s.delete(load(s, item_id))
        return Response(status_code=204)

    router.add_api_route(
        "",
        list_items,
        methods=["GET"],
        response_model=list[out_schema],  # type: ignore[valid-type]  # a schema class chosen at run time
        summary=f"List {kind.plural.lower()}",
    )
    router.add_api_route(
        "",
        create_item,
        methods=["POST"],
        response_model=out_schema,
        status_code=201,
        summary=f"Add a {kind.label} (admin)",
    )
    router.add_api_route(
        "/{item_id}", get_item, methods=["GET"], response_model=out_schema, summary=f"One {kind.label}"
    )
    router.add_api_route(
        "/{item_id}",
        update_item,
        methods=["PATCH"],
        response_model=out_schema,
        summary=f"Change a {kind.label} (admin)",
    )
    router.add_api_route(
        "/{item_id}", delete_item, methods=["DELETE"], status_code=204, summary=f"Remove a {kind.label} (admin)"
    )
    return router


def echo_router() -> APIRouter:
    router = APIRouter(prefix="/destinations", tags=["Destinations"])

    @router.post(
        "/{item_id}/echo",
        summary="Test the destination (C-ECHO; a DICOMweb one: a QIDO-RS search) and report the answer and "
        "round-trip time",
    )
    def echo(item_id: int, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
        return echo_saved_destination(request, item_id).to_json()

    return router
