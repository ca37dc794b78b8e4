"""The REST API under /api (bearer tokens; a logged-in browser may read it too), and the public
monitoring routes /health and /metrics."""

from __future__ import annotations

from fastapi import APIRouter

from dicom_node.admin.api import access, config, monitoring, series_jobs, worklist
from dicom_node.admin.config_kinds import KINDS


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api")
    for kind in KINDS:
        router.include_router(config.config_router(kind))
    router.include_router(config.echo_router())
    router.include_router(series_jobs.router)
    router.include_router(access.router)
    router.include_router(worklist.router)
    return router


monitoring_router = monitoring.router

__all__ = ["api_router", "monitoring_router"]
