"""Who am I, users, API tokens (an admin creates and revokes them), the audit log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from dicom_node.admin import audit, tokens
from dicom_node.admin.auth import Principal, token_dict, user_dict
from dicom_node.admin.deps import admin, client_addr, ctx, principal
from dicom_node.db.models import ApiToken, User
from dicom_node.validation import UserName

router = APIRouter(tags=["Access"])


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="what the token is for, e.g. 'backup script'")
    user: UserName | None = Field(None, description="whose role the token carries (default: yours)")


@router.get("/me", summary="The caller: name, role, and how they logged in")
def me(who: Principal = Depends(principal)) -> dict[str, Any]:
    return {"name": who.name, "role": who.role, "via": who.via}


@router.get("/users", summary="Users (admin); create them with `dicom-node admin create-user`")
def list_users(request: Request, who: Principal = Depends(admin)) -> list[dict[str, Any]]:
    with ctx(request).db.session() as s:
        return [user_dict(u) for u in s.scalars(select(User).order_by(User.name))]


@router.get("/tokens", summary="API tokens (admin); the tokens themselves are never shown again")
def list_tokens(request: Request, who: Principal = Depends(admin)) -> list[dict[str, Any]]:
    with ctx(request).db.session() as s:
        return [token_dict(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.id))]


@router.post(
    "/tokens", status_code=201, summary="Create an API token (admin); the answer holds the token, shown this once"
)
def new_token(data: TokenIn, request: Request, who: Principal = Depends(admin)) -> dict[str, Any]:
    with ctx(request).db.session() as s:
        out, raw, _ = tokens.issue(s, who, data.user or who.name, data.name, remote_addr=client_addr(request))
    return {**out, "token": raw}


@router.delete("/tokens/{token_id}", summary="Revoke an API token (admin): it fails from its next use on")
def delete_token(token_id: int, request: Request, who: Principal = Depends(admin)) -> dict[str, Any]:
    with ctx(request).db.session() as s:
        return tokens.withdraw(s, who, token_id, remote_addr=client_addr(request))


@router.get("/audit", summary="The audit log, newest first")
def audit_log(
    request: Request,
    limit: int = Query(200, ge=1, le=5000),
    target_type: str | None = Query(None, description="local_ae, source, destination, token, user, job, session"),
    target_id: str | None = None,
    before_id: int | None = Query(None, description="entries older than this id (paging)"),
    who: Principal = Depends(principal),
) -> list[dict[str, Any]]:
    with ctx(request).db.session() as s:
        return audit.entries(s, limit=limit, target_type=target_type, target_id=target_id, before_id=before_id)
