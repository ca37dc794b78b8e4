"""API tokens (admins) and the audit log (everyone); users are dicom_node.admin.pages.users'."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.datastructures import FormData
from starlette.responses import Response

from dicom_node.admin import audit
from dicom_node.admin import tokens as token_actions
from dicom_node.admin.auth import token_dict, user_dict
from dicom_node.admin.deps import admin, client_addr, ctx, form, principal, render
from dicom_node.db.models import ApiToken, User
from dicom_node.errors import Refused

router = APIRouter()

AUDIT_PAGE = 100
AUDIT_TYPES = ["local_ae", "source", "destination", "job", "token", "user", "session"]


def _tokens_page(
    request: Request,
    *,
    new_token: dict[str, Any] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    with ctx(request).db.session() as s:
        users = [user_dict(u) for u in s.scalars(select(User).order_by(User.name))]
        tokens = [token_dict(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.id.desc()))]
    flash = request.session.pop("flash", "")
    return render(
        request,
        "tokens.html",
        {"users": users, "tokens": tokens, "new_token": new_token, "errors": errors or {}, "flash": flash},
        status_code=status_code,
    )


@router.get("/tokens")
def tokens(request: Request) -> Response:
    admin(request)
    return _tokens_page(request)


@router.post("/tokens")
def create(request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    name = str(data.get("name", "")).strip()
    user_name = str(data.get("user", "")).strip() or who.name
    if not name:
        return _tokens_page(request, errors={"name": "must not be empty"}, status_code=422)
    try:
        with ctx(request).db.session() as s:
            out, raw, _ = token_actions.issue(s, who, user_name, name, remote_addr=client_addr(request))
    except Refused as exc:
        return _tokens_page(request, errors={exc.field or "name": exc.reason}, status_code=422)
    return _tokens_page(request, new_token={**out, "token": raw}, status_code=201)


def _token(request: Request, token_id: int) -> dict[str, Any]:
    with ctx(request).db.session() as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise HTTPException(404, f"no API token with id {token_id}")
        return token_dict(row)


@router.get("/tokens/{token_id}/revoke")
def confirm_revoke(token_id: int, request: Request) -> Response:
    admin(request)
    return render(request, "confirm_revoke.html", {"token": _token(request, token_id)})


@router.post("/tokens/{token_id}/revoke")
def revoke(token_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    with ctx(request).db.session() as s:
        token_actions.withdraw(s, who, token_id, remote_addr=client_addr(request))
    request.session["flash"] = f"Token {token_id} revoked."
    return RedirectResponse("/tokens", status_code=303)


@router.get("/audit")
def audit_page(request: Request, target_type: str = "", before_id: int | None = None) -> Response:
    principal(request)
    with ctx(request).db.session() as s:
        rows = audit.entries(s, limit=AUDIT_PAGE, target_type=target_type or None, before_id=before_id)
    older = rows[-1]["id"] if len(rows) == AUDIT_PAGE else None
    return render(
        request, "audit.html", {"rows": rows, "target_type": target_type, "types": AUDIT_TYPES, "older": older}
    )
