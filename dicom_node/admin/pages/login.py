"""Logging in and out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData
from starlette.responses import Response

from dicom_node.admin import audit
from dicom_node.admin.auth import end_session, new_csrf_token, start_session, user_for_login
from dicom_node.admin.deps import client_addr, ctx, form, principal, render

router = APIRouter()


def safe_next(value: str | None) -> str:
    """Only a path on this site (never //host or a scheme)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", {"next": safe_next(next), "error": "", "name": ""})


@router.post("/login")
def login(request: Request, data: FormData = Depends(form)) -> Response:
    context = ctx(request)
    name = str(data.get("name", "")).strip()
    password = str(data.get("password", ""))
    target = safe_next(str(data.get("next", "/")))
    with context.db.session() as s:
        wait = context.throttle.locked(s, name, client_addr(request))
    if wait > 0:
        context.metrics.logins.labels("locked").inc()
        message = f"Too many wrong passwords for this name from this address; try again in {int(wait) + 1} s."
        return render(request, "login.html", {"next": target, "error": message, "name": name}, status_code=429)
    with context.db.session() as s:
        user = user_for_login(s, context.passwords, name, password)
        if user is None:
            audit.record(
                s,
                name[:100] or "(empty)",
                "session.login_failed",
                target_type="session",
                via="web",
                remote_addr=client_addr(request),
            )
        else:
            sid = start_session(s, user, hours=context.settings.admin.session_hours, remote_addr=client_addr(request))
            audit.record(
                s,
                user.name,
                "session.login",
                target_type="session",
                target=user.name,
                via="web",
                remote_addr=client_addr(request),
            )
    if user is None:
        context.metrics.logins.labels("failed").inc()
        return render(
            request, "login.html", {"next": target, "error": "Wrong name or password.", "name": name}, status_code=401
        )
    context.metrics.logins.labels("ok").inc()
    # A new session: nothing from before the login (a planted CSRF token included) survives.
    request.session.clear()
    request.session["sid"] = sid
    request.session["csrf"] = new_csrf_token()
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
def logout(request: Request, data: FormData = Depends(form)) -> Response:
    who = principal(request)
    sid = request.session.get("sid")
    with ctx(request).db.session() as s:
        if sid:
            end_session(s, str(sid))
        audit.record(s, who, "session.logout", target_type="session", target=who.name, remote_addr=client_addr(request))
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
