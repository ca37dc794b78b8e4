"""Public without login: /health (JSON; 503 when a check fails) and /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from dicom_node.admin.deps import ctx
from dicom_node.admin.health import health

router = APIRouter(tags=["Monitoring"])


@router.get("/health", summary="Database, broker, disk space, listeners; 200 when all are fine, else 503")
def get_health(request: Request) -> JSONResponse:
    context = ctx(request)
    report = health(context.settings, context.db)
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)


@router.get("/metrics", summary="Prometheus metrics, read from the database at each scrape", response_class=Response)
def get_metrics(request: Request) -> Response:
    body, content_type = ctx(request).metrics.exposition()
    return Response(body, media_type=content_type)
