"""What every route needs: the app's context, the principal of the request, role and CSRF
checks, the template renderer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.responses import Response

from dicom_node import __version__
from dicom_node.admin.auth import LoginThrottle, Passwords, Principal, csrf_matches, new_csrf_token
from dicom_node.admin.metrics import AdminMetrics
from dicom_node.db import Database
from dicom_node.db.times import as_utc
from dicom_node.settings import Settings
from dicom_node.validation import Role
from model.contract.notice import NOT_FOR_CLINICAL_USE

if TYPE_CHECKING:
    from dicom_node.listener.scp import Receiver

HERE = Path(__file__).parent
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class AdminContext:
    """Everything one admin app holds; kept on ``app.state.ctx``."""

    settings: Settings
    db: Database
    passwords: Passwords
    metrics: AdminMetrics
    templates: Jinja2Templates
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # STOW-RS input's receiver (dicom_node.admin.dicomweb makes it on first use).
    receiver: "Receiver | None" = None


def ctx(request: Request) -> AdminContext:
    context: AdminContext = request.app.state.ctx
    return context


def principal(request: Request) -> Principal:
    """The authenticated user (the auth middleware let only those through)."""
    who: Principal | None = getattr(request.state, "principal", None)
    if who is None:
        raise HTTPException(401, "not authenticated")
    return who


def admin(request: Request) -> Principal:
    """The authenticated user, who must be an admin."""
    who = principal(request)
    if not who.is_admin:
        raise HTTPException(403, f"only an admin may do this; {who.name} is a {who.role}")
    return who


def reviewer(request: Request) -> Principal:
    """The authenticated user, who must be a radiologist or an admin (acknowledgements, verdicts)."""
    who = principal(request)
    if who.role not in (Role.RADIOLOGIST.value, Role.ADMIN.value):
        raise HTTPException(403, f"only a radiologist or an admin may review results; {who.name} is a {who.role}")
    return who


def client_addr(request: Request) -> str:
    return request.client.host if request.client else ""


def csrf_token(request: Request) -> str:
    """This browser session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = new_csrf_token()
        request.session["csrf"] = token
    return str(token)


async def form(request: Request) -> FormData:
    """The posted form, after checking its CSRF token (bearer-token callers need none: a browser
    never sends those by itself)."""
    data = await request.form()
    who: Principal | None = getattr(request.state, "principal", None)
    if who is not None and who.via != "web":
        return data
    given = data.get("csrf_token") or request.headers.get("x-csrf-token")
    if not csrf_matches(request.session.get("csrf"), str(given) if given else None):
        raise HTTPException(
            403,
            "this form has expired or did not come from this site (CSRF token missing or wrong); reload the page and "
            "try again",
        )
    return data


def when(value: Any) -> str:
    """A time for people: UTC, to the second; "" for none."""
    if value in (None, ""):
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        return as_utc(value).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def age(value: Any) -> str:
    """A wait for people: "45 s", "12 min", "3 h 05 min", "2 d 4 h"."""
    if not isinstance(value, (int, float)):
        return ""
    s = int(value)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def seconds(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"
    return str(value)


# Job.timings keys (dicom_node.pipeline.analyse, dicom_node.jobs.exports, the model's stages) as
# people read them; each value is seconds. Keys not listed show as they are, in seconds too.
TIMING_LABELS = {
    "queue_wait": "Waiting in the queue",
    "fetch": "Fetching the series from the node",
    "load": "Reading the series",
    "model_load": "Loading the model (a worker's first job)",
    "inference": "Analysis by the model",
    "encoding": "Writing the DICOM results",
    "upload": "Handing the results to the node",
    "export": "Sending the results (slowest destination)",
}
STAGE_LABELS = {
    "read": "reading",
    "lungs": "finding the lungs",
    "network": "the network",
    "cam": "class activation maps",
    "ig": "Integrated Gradients",
    "regions": "regions and key slices",
    "total": "total",
}


def timing_rows(timings: Any) -> list[tuple[str, str]]:
    """(label, "1.23 s") for a job's timings, in the order the work happens; the model's stages
    and the sends per destination indented under their step. ``attempt`` is not a time: the
    page shows the attempts apart."""
    if not isinstance(timings, dict):
        return []
    rows: list[tuple[str, str]] = []
    order = [*TIMING_LABELS, *(k for k in timings if k not in TIMING_LABELS)]
    for key in order:
        if key not in timings or key in ("attempt", "stages", "export_by_destination"):
            continue
        rows.append((TIMING_LABELS.get(key, key.replace("_", " ").capitalize()), seconds(timings[key])))
        if key == "inference" and isinstance(timings.get("stages"), dict):
            rows += [(f"· {STAGE_LABELS.get(k, k)}", seconds(v)) for k, v in timings["stages"].items()]
        if key == "export" and isinstance(timings.get("export_by_destination"), dict):
            rows += [(f"· to {title}", seconds(v)) for title, v in timings["export_by_destination"].items()]
    return rows


def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters["when"] = when
    t.env.filters["seconds"] = seconds
    t.env.filters["timing_rows"] = timing_rows
    t.env.filters["age"] = age
    return t


def render(
    request: Request, template: str, context: dict[str, Any] | None = None, *, status_code: int = 200
) -> Response:
    """A page, with what every page shows (who is logged in, the CSRF token, the notice)."""
    values: dict[str, Any] = {
        "who": getattr(request.state, "principal", None),
        "csrf_token": csrf_token(request),
        "notice": NOT_FOR_CLINICAL_USE,
        "version": __version__,
    }
    values.update(context or {})
    return ctx(request).templates.TemplateResponse(request, template, values, status_code=status_code)
