"""STOW-RS input on the admin app: ``POST /dicomweb/<local AE title>/studies`` (PS3.18 10.5).

Access: ``Authorization: Bearer <API token>`` (dicom_node.admin.auth), and the token must be on
the local AE's allow-list (``dicom-node ae update-local TITLE --stow-tokens ID``; a token of role
``sender`` reaches nothing else). The app's middleware answers 401 without a valid token; here:
404 for no enabled local AE of that title, 403 for a token the AE does not allow, 415/400/406/413
for a request that is not a STOW-RS request the node takes, else the Store Instances response with
200 (all stored), 202 (some) or 409 (none) and a failure reason per refused instance
(dicom_node.dicomweb.stow). Every refusal is logged (at most a few lines a minute per address) and
kept as an event; each refused instance has its own log line and event.
"""

from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from dicom_node.admin.deps import AdminContext, client_addr, principal
from dicom_node.db.models import LocalAE
from dicom_node.dicomweb.stow import (
    STOW_CALLING_AE,
    RequestRefused,
    StowReader,
    boundary_of,
    encode,
    http_status,
    response_dataset,
    response_type,
    warnings,
)
from dicom_node.listener.limits import PeerLog
from dicom_node.listener.scp import Receiver, accepted_sop_classes, receiver_for
from dicom_node.storage.index import LocalAESnapshot

log = logging.getLogger(__name__)
PREFIX = "/dicomweb"
# Refused requests: at most 3 log lines (and events) a minute per client address and HTTP status.
REFUSALS = PeerLog(log, burst=3, window=60.0)

router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
_lock = threading.Lock()


def _ctx(request: Request) -> AdminContext:
    ctx: AdminContext = request.app.state.ctx
    return ctx


def receiver(ctx: AdminContext) -> Receiver:
    """The app's receiver (made on first use): the listener's, over the same storage and index."""
    with _lock:
        if ctx.receiver is None:
            ctx.receiver = receiver_for(ctx.settings, ctx.db, actor="dicomweb")
        return ctx.receiver


async def refuse(request: Request, status: int, detail: str, *, local_ae: str = "") -> Response:
    """A refused request: a log line and an event (at most a few a minute per client address:
    anyone who reaches the port can cause them), and the JSON answer."""
    host = client_addr(request)
    who = getattr(request.state, "principal", None)
    sender = f"{who.name} ({who.via})" if who is not None else "no valid token"
    message = "STOW-RS refused (HTTP %d) from %s, %s, to %s: %s"
    logged = REFUSALS.warning(
        host, f"stow refused {status}", message, status, host, sender, local_ae or request.url.path, detail
    )
    if logged is not None:
        more = f" ({logged} more refusals of {host} in the last {REFUSALS.window:g} s not recorded)" if logged else ""
        await run_in_threadpool(
            receiver(_ctx(request)).index.event,
            "store",
            f"STOW-RS request to {local_ae or request.url.path} refused (HTTP {status}) for {sender}: {detail}{more}",
            level="warning",
            calling_ae=STOW_CALLING_AE,
            calling_host=host,
            local_ae=local_ae,
        )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _local_ae(ctx: AdminContext, title: str) -> tuple[LocalAESnapshot, set[int]] | None:
    """The enabled local AE titled ``title`` and the ids of the tokens it allows; None if none."""
    with ctx.db.session() as s:
        row = s.scalar(select(LocalAE).where(LocalAE.title == title, LocalAE.enabled.is_(True)))
        if row is None:
            return None
        return LocalAESnapshot.of(row), {t.id for t in row.stow_tokens if t.revoked_at is None}


@router.post("/{title}/studies", summary="STOW-RS: store instances into a local AE")
async def store_instances(title: str, request: Request) -> Response:
    ctx = _ctx(request)
    who = principal(request)
    found = await run_in_threadpool(_local_ae, ctx, title)
    if found is None:
        return await refuse(request, 404, f"no enabled local AE titled {title!r}")
    local_ae, allowed = found
    if who.token_id is None or who.token_id not in allowed:
        return await refuse(
            request,
            403,
            f"API token {who.token_id} ({who.name}) may not store into {title}: "
            f"dicom-node ae update-local {title} --stow-tokens ID[,ID] allows tokens",
            local_ae=title,
        )
    try:
        boundary = boundary_of(request.headers.get("content-type", ""))
        media_type = response_type(request.headers.get("accept", ""))
        limit = ctx.settings.dicomweb.max_request_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            # Refused before a byte of the body is read (a client that sent Expect: 100-continue
            # does not send it at all).
            raise RequestRefused(413, f"request body of {length} bytes, more than {limit} (dicomweb.max_request_bytes)")
    except RequestRefused as exc:
        return await refuse(request, exc.status, exc.detail, local_ae=title)
    extra = [*ctx.settings.listener.extra_sop_classes, *local_ae.extra_sop_classes]
    reader = StowReader(
        receiver(ctx),
        local_ae,
        frozenset(accepted_sop_classes(extra)),
        boundary=boundary,
        calling_host=client_addr(request),
        max_request_bytes=limit,
    )
    try:
        async for chunk in request.stream():
            await run_in_threadpool(reader.feed, chunk)
        outcomes = await run_in_threadpool(reader.finish)
    except RequestRefused as exc:
        stored = sum(1 for o in reader.outcomes if o.stored)
        kept = f"; {stored} instance(s) before it were stored" if stored else ""
        return await refuse(request, exc.status, exc.detail + kept, local_ae=title)
    except ClientDisconnect:
        host = client_addr(request)
        log.warning("STOW-RS to %s from %s: the client went away; the instance being read is discarded", title, host)
        return Response(status_code=400)
    finally:
        reader.abort()
    status = http_status(outcomes)
    stored = sum(1 for o in outcomes if o.stored)
    log.log(
        logging.INFO if status == 200 else logging.WARNING,
        "STOW-RS to %s from %s (%s, %s): %d instance(s) stored, %d refused",
        title,
        client_addr(request),
        who.name,
        who.via,
        stored,
        len(outcomes) - stored,
    )
    response = Response(encode(response_dataset(outcomes), media_type), status_code=status, media_type=media_type)
    for value in warnings(outcomes):
        response.headers.append("Warning", value)
    return response
