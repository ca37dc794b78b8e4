"""Server-rendered pages for people (Jinja2 templates, a little own JavaScript for the lists that
refresh themselves). Every POST is checked for the session's CSRF token before its handler runs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from dicom_node.admin.deps import SAFE_METHODS, form
from dicom_node.admin.pages import access, backfills, config, login, overview, rules, users, worklist


async def csrf_guard(request: Request) -> None:
    """Refuse a form post without the session's CSRF token (403)."""
    if request.method not in SAFE_METHODS:
        await form(request)


def pages_router() -> APIRouter:
    router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])
    router.include_router(login.router)
    router.include_router(overview.router)
    router.include_router(config.router)
    router.include_router(access.router)
    router.include_router(users.router)
    router.include_router(worklist.router)
    router.include_router(rules.router)
    router.include_router(backfills.router)
    return router
