"""The node's internal endpoints for workers on other hosts (/internal/v1/, not in the OpenAPI
schema): what a worker that shares no disk with the node needs (dicom_node.pipeline.remote).

- ``GET identity``: the id of the node's data dir (dicom_node.storage.identity), so a worker can
  tell a shared volume and then fetch nothing;
- ``GET storage/<path>``: a stored instance, by the relative path the index holds (only an indexed
  path is served);
- ``GET results/<job id>/<file>`` and ``PUT results/<job id>/<file>``: a job's result files
  (dicom_node.storage.results: result.json, maps.npz, dicom/<kind>/<uid>.dcm); a PUT is written
  durably and atomically before it is answered, and only for a job that exists.

Access: ``Authorization: Bearer <remote.token>`` (compared in constant time); without a token
configured the endpoints do not exist (404). The admin app's middleware applies this rule
(:func:`authorised`) instead of its user sessions and API tokens.
"""

from __future__ import annotations

import hmac
import re
import uuid
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from dicom_node import __version__
from dicom_node.admin.deps import AdminContext
from dicom_node.db.models import Instance, Job
from dicom_node.settings import Settings
from dicom_node.storage.files import write_file_atomic
from dicom_node.storage.identity import data_dir_id

PREFIX = "/internal/v1"
# The result files a job leaves (dicom_node.storage.results), and nothing else.
RESULT_FILE = re.compile(r"^(result\.json|maps\.npz|dicom/[a-z]{1,16}/[0-9.]{1,64}\.dcm)$")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def authorised(settings: Settings, authorization: str) -> int:
    """200 when ``authorization`` carries the token; 404 when no token is configured; else 401."""
    token = settings.remote.token
    if token is None:
        return 404
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return 200
    return 401


def _ctx(request: Request) -> AdminContext:
    ctx: AdminContext = request.app.state.ctx
    return ctx


@router.get("/identity")
def identity(request: Request) -> dict[str, str | None]:
    return {"data_dir_id": data_dir_id(_ctx(request).settings.data_dir, create=True), "version": __version__}


@router.get("/storage/{path:path}")
def stored_instance(path: str, request: Request) -> FileResponse:
    ctx = _ctx(request)
    with ctx.db.reader() as conn:
        size = conn.execute(select(Instance.size_bytes).where(Instance.path == path)).scalar()
    target = ctx.settings.storage_dir / path
    if size is None or not target.is_file():
        raise HTTPException(404, f"no stored instance at {path}")
    return FileResponse(target, media_type="application/dicom")


def _result_path(ctx: AdminContext, job_id: int, name: str) -> Path:
    if not RESULT_FILE.match(name):
        raise HTTPException(404, f"{name} is not a result file")
    return ctx.settings.results_dir / str(int(job_id)) / name


@router.get("/results/{job_id}/{name:path}")
def result_file(job_id: int, name: str, request: Request) -> FileResponse:
    target = _result_path(_ctx(request), job_id, name)
    if not target.is_file():
        raise HTTPException(404, f"job {job_id} has no {name}")
    return FileResponse(target, media_type="application/octet-stream")


@router.put("/results/{job_id}/{name:path}", status_code=204)
async def put_result_file(job_id: int, name: str, request: Request) -> None:
    ctx = _ctx(request)
    target = _result_path(ctx, job_id, name)
    length = int(request.headers.get("content-length") or 0)
    if length > MAX_UPLOAD_BYTES:
        raise HTTPException(413, f"{name}: {length} bytes is more than a result file may be")
    data = await request.body()
    if length and len(data) != length:
        raise HTTPException(400, f"{name}: got {len(data)} of {length} bytes")

    def write() -> None:
        with ctx.db.reader() as conn:
            if conn.execute(select(Job.id).where(Job.id == job_id)).scalar() is None:
                raise HTTPException(404, f"job {job_id} does not exist")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(target, data, tmp=target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp"))

    await run_in_threadpool(write)
