"""User management for admins: the list with a form for a new user (/users), and one user's page
(/users/{id}) to change the role, disable or enable, and set a new password. The rules and the
audit rows are dicom_node.admin.users'; an error is shown at its field (or above the form)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.datastructures import FormData
from starlette.responses import Response

from dicom_node.admin import audit, users
from dicom_node.admin.auth import user_dict
from dicom_node.admin.deps import admin, client_addr, ctx, form, render
from dicom_node.db.models import User
from dicom_node.errors import Refused
from dicom_node.validation import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, ROLES

router = APIRouter()

PASSWORD_HELP = f"{MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"


def _users_page(
    request: Request,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    with ctx(request).db.session() as s:
        rows = [user_dict(u) for u in s.scalars(select(User).order_by(User.name))]
    return render(
        request,
        "users.html",
        {
            "users": rows,
            "roles": ROLES,
            "errors": errors or {},
            "values": values or {},
            "password_help": PASSWORD_HELP,
            "flash": request.session.pop("flash", ""),
        },
        status_code=status_code,
    )


def _user_page(
    request: Request, user_id: int, *, errors: dict[str, str] | None = None, status_code: int = 200
) -> Response:
    with ctx(request).db.session() as s:
        user = s.get(User, user_id)
        if user is None:
            return render(
                request,
                "error.html",
                {"status": 404, "message": f"no user with id {user_id}", "errors": []},
                status_code=404,
            )
        row = user_dict(user)
        history = audit.entries(s, limit=50, target_type="user", target_id=str(user_id))
    return render(
        request,
        "user.html",
        {
            "user": row,
            "roles": ROLES,
            "errors": errors or {},
            "history": history,
            "password_help": PASSWORD_HELP,
            "flash": request.session.pop("flash", ""),
        },
        status_code=status_code,
    )


def _passwords(data: FormData) -> tuple[str, dict[str, str]]:
    password, again = str(data.get("password", "")), str(data.get("password_again", ""))
    return password, ({"password_again": "the two passwords differ"} if password != again else {})


def _field(exc: Refused) -> dict[str, str]:
    return {exc.field or "general": exc.reason}


@router.get("/users")
def users_page(request: Request) -> Response:
    admin(request)
    return _users_page(request)


@router.post("/users")
def create(request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    name, role = str(data.get("name", "")).strip(), str(data.get("role", ""))
    password, errors = _passwords(data)
    if errors:
        return _users_page(request, errors=errors, values={"name": name, "role": role}, status_code=422)
    context = ctx(request)
    try:
        with context.db.session() as s:
            user = users.add(s, who, context.passwords, name, role, password, remote_addr=client_addr(request))
            made = user.name
    except Refused as exc:
        return _users_page(request, errors=_field(exc), values={"name": name, "role": role}, status_code=422)
    request.session["flash"] = f"User {made} ({role}) added."
    return RedirectResponse("/users", status_code=303)


@router.get("/users/{user_id}")
def user_page(user_id: int, request: Request) -> Response:
    admin(request)
    return _user_page(request, user_id)


def _change(request: Request, user_id: int, done: str, change: "users.Change") -> Response:
    try:
        with ctx(request).db.session() as s:
            user = change(s)
            name = user.name
    except Refused as exc:
        return _user_page(request, user_id, errors=_field(exc), status_code=422)
    request.session["flash"] = done.format(name=name)
    return RedirectResponse(f"/users/{user_id}", status_code=303)


@router.post("/users/{user_id}/role")
def change_role(user_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    role = str(data.get("role", ""))
    return _change(
        request,
        user_id,
        f"{{name}} is now {role}.",
        lambda s: users.change_role(s, who, user_id, role, remote_addr=client_addr(request)),
    )


@router.post("/users/{user_id}/enabled")
def set_enabled(user_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    enabled = str(data.get("enabled", "")) == "true"
    done = (
        "{name} is enabled again."
        if enabled
        else "{name} is disabled: their sessions have ended and their API tokens do not work."
    )
    return _change(
        request, user_id, done, lambda s: users.set_enabled(s, who, user_id, enabled, remote_addr=client_addr(request))
    )


@router.post("/users/{user_id}/password")
def reset_password(user_id: int, request: Request, data: FormData = Depends(form)) -> Response:
    who = admin(request)
    password, errors = _passwords(data)
    if errors:
        return _user_page(request, user_id, errors=errors, status_code=422)
    passwords = ctx(request).passwords
    return _change(
        request, user_id, "{name} has a new password; their sessions have ended.",
        lambda s: users.reset_password(s, who, passwords, user_id, password, remote_addr=client_addr(request)),
    )  # fmt: skip
