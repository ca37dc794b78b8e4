"""The admin application: ``create_app(settings, db)``.

Access rule, applied to every route by one middleware: /health, /metrics, /login and /static/
are public; anything else needs a logged-in browser session or an API bearer token, and answers
401 (API, /openapi.json) or redirects to the login page (pages) without one. Admins change,
viewers read (checked per route); radiologists reach the triage worklist and its monitoring only
(RADIOLOGIST_PREFIXES), where they acknowledge studies and give verdicts. /internal/v1/
(dicom_node.admin.internal, for workers on other hosts) answers to the node's remote.token only.
Page forms carry a per-session CSRF token; a logged-in browser that writes to the API must send it
in X-CSRF-Token.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import Response

from dicom_node import __version__
from dicom_node.admin.api import api_router, monitoring_router
from dicom_node.admin.auth import (
    Passwords,
    Principal,
    csrf_matches,
    principal_for_session,
    principal_for_token,
    secret_key,
)
from dicom_node.admin.deps import HERE, SAFE_METHODS, AdminContext, render, templates
from dicom_node.admin.dicomweb import PREFIX as DICOMWEB_PREFIX
from dicom_node.admin.dicomweb import refuse as dicomweb_refuse
from dicom_node.admin.dicomweb import router as dicomweb_router
from dicom_node.admin.internal import PREFIX as INTERNAL_PREFIX
from dicom_node.admin.internal import authorised as internal_authorised
from dicom_node.admin.internal import router as internal_router
from dicom_node.admin.metrics import AdminMetrics
from dicom_node.admin.pages import pages_router
from dicom_node.db import Database
from dicom_node.errors import Conflict, Invalid, NodeError, NotFound, Refused, Unavailable
from dicom_node.settings import Settings
from dicom_node.validation import Role
from model.contract.notice import NOT_FOR_CLINICAL_USE

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/login", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
SESSION_COOKIE = "dicom_node_session"
# Only this site's own scripts, styles, pictures and forms; no framing.
CSP = (
    "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

Next = Callable[[Request], Awaitable[Response]]


# All a radiologist reaches: the worklist, its pictures and its monitoring, as pages and as API,
# and logging out. Every other page and API route answers 403 to them.
RADIOLOGIST_PREFIXES = ("/worklist", "/triage", "/api/worklist", "/api/triage")
RADIOLOGIST_PATHS = frozenset({"/logout"})


def radiologist_may(path: str) -> bool:
    return path in RADIOLOGIST_PATHS or any(path == p or path.startswith(p + "/") for p in RADIOLOGIST_PREFIXES)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def wants_json(path: str) -> bool:
    return path.startswith(("/api/", "/internal/", DICOMWEB_PREFIX + "/")) or path in (
        "/api",
        "/openapi.json",
        "/health",
        "/metrics",
    )


def _resolve(context: AdminContext, request: Request, *, token_only: bool = False) -> tuple[Principal | None, str]:
    """(principal, why not) from the bearer token or else (unless ``token_only``) the session cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    with context.db.session() as s:
        if header or token_only:
            if scheme.lower() != "bearer" or not credentials.strip():
                return None, "use 'Authorization: Bearer <token>'"
            who = principal_for_token(s, credentials.strip())
            return (who, "") if who is not None else (None, "the token is unknown or revoked")
        sid = request.session.get("sid")
        if sid:
            who = principal_for_session(s, str(sid))
            if who is not None:
                return who, ""
            request.session.pop("sid", None)
            return None, "the session has ended; log in again"
    return None, "log in, or send an API token as 'Authorization: Bearer <token>'"


def error_response(request: Request, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> Response:
    """JSON for the API, a page for people."""
    if wants_json(request.url.path):
        return JSONResponse({"detail": errors if errors is not None else message}, status_code=status)
    return render(
        request, "error.html", {"status": status, "message": message, "errors": errors or []}, status_code=status
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(p for p in loc if p not in ("body", "query", "path")) or None
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        out.append({"field": field, "loc": loc, "msg": msg, "type": err.get("type", "")})
    return out


def _context(request: Request) -> AdminContext:
    context: AdminContext = request.app.state.ctx
    return context


async def authenticate(request: Request, call_next: Next) -> Response:
    """Middleware: the principal of every request but the public ones, from a bearer token or the
    session cookie; workers on other hosts by the shared remote.token; a browser session writing to
    the API must send its CSRF token."""
    path = request.url.path
    request.state.principal = None
    if is_public(path):
        return await call_next(request)
    context = _context(request)
    if path.startswith(INTERNAL_PREFIX + "/"):
        # Workers on other hosts (admin.internal): the shared remote.token, no user session.
        code = internal_authorised(context.settings, request.headers.get("authorization", ""))
        if code == 200:
            return await call_next(request)
        detail = (
            "not found"
            if code == 404
            else "not authenticated: send the node's remote.token as 'Authorization: Bearer <token>'"
        )
        return JSONResponse({"detail": detail}, status_code=code)
    if path.startswith(DICOMWEB_PREFIX + "/"):
        # STOW-RS (dicom_node.admin.dicomweb): an API token only, whatever its role; the route
        # checks the local AE's allow-list. No browser session: a page must not store instances.
        who, why = await run_in_threadpool(_resolve, context, request, token_only=True)
        if who is None:
            return await dicomweb_refuse(request, 401, f"not authenticated: {why}")
        request.state.principal = who
        return await call_next(request)
    who, why = await run_in_threadpool(_resolve, context, request)
    if who is None:
        if wants_json(path):
            return JSONResponse(
                {"detail": f"not authenticated: {why}"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    if who.via == "web" and request.method not in SAFE_METHODS and wants_json(path):
        if not csrf_matches(request.session.get("csrf"), request.headers.get("x-csrf-token")):
            return JSONResponse(
                {"detail": "a browser session writing to the API must send its CSRF token in X-CSRF-Token"},
                status_code=403,
            )
    request.state.principal = who
    if who.role == Role.SENDER.value:
        return error_response(request, 403, f"{who.name} is a sender: it may only store instances by STOW-RS")
    if who.role == Role.RADIOLOGIST.value and not radiologist_may(path):
        if path == "/":
            return RedirectResponse("/worklist", status_code=303)
        return error_response(request, 403, f"{who.name} is a radiologist: the worklist is at /worklist")
    return await call_next(request)


async def measure(request: Request, call_next: Next) -> Response:
    """Middleware: the request's time in the metrics (by route template), and the security headers."""
    start = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    template = getattr(route, "path", None) or ("/static" if request.url.path.startswith("/static/") else "unmatched")
    _context(request).metrics.observe(request.method, template, response.status_code, time.perf_counter() - start)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Content-Security-Policy", CSP)
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    response = error_response(request, exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _field_errors(exc)
    return error_response(request, 422, "; ".join(f"{e['field']}: {e['msg']}" for e in errors), errors)


async def node_error(request: Request, exc: Exception) -> Response:
    """The node's error kinds (dicom_node.errors) as their HTTP status; a Refused names its field."""
    assert isinstance(exc, NodeError)
    errors = None
    if isinstance(exc, Refused):
        errors = [{"field": exc.field, "loc": ["body", exc.field or ""], "msg": exc.reason, "type": "refused"}]
    return error_response(request, exc.http_status, str(exc), errors)


async def favicon() -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=301)


def create_app(settings: Settings, db: Database) -> FastAPI:
    """The admin app over ``db`` (migrated already: ``dicom-node serve`` does it at start)."""
    app = FastAPI(
        title="COVID-CT AI node admin",
        version=__version__,
        description=(
            "Local AE titles, allowed sources, destinations, series and jobs of the node. "
            "Authenticate with 'Authorization: Bearer <token>' (`dicom-node admin create-token`). "
            + NOT_FOR_CLINICAL_USE
        ),
        openapi_url="/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load their code from a CDN: nothing is fetched at run time
        redoc_url=None,
    )
    app.state.ctx = AdminContext(
        settings=settings,
        db=db,
        passwords=Passwords(),
        metrics=AdminMetrics(db, settings),
        templates=templates(),
    )
    # Starlette runs the last added middleware first: measure, then the session cookie, then auth.
    app.add_middleware(BaseHTTPMiddleware, dispatch=authenticate)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret_key(settings),
        session_cookie=SESSION_COOKIE,
        max_age=int(settings.admin.session_hours * 3600),
        same_site="lax",
        # Secure cookies once the pages are served over HTTPS (a TLS proxy in front).
        https_only=settings.admin.secure_cookies,
    )
    app.add_middleware(BaseHTTPMiddleware, dispatch=measure)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    for kind in (Invalid, NotFound, Conflict, Unavailable):
        app.add_exception_handler(kind, node_error)
    app.add_api_route("/favicon.ico", favicon, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(monitoring_router)
    app.include_router(internal_router)
    app.include_router(dicomweb_router)
    app.include_router(api_router())
    app.include_router(pages_router())
    return app
