"""The Celery tasks: thin. Each takes a job id and calls a plain function of dicom_node.pipeline,
which reads state from the database and records every transition there.

One :class:`dicom_node.pipeline.runtime.Runtime` per worker process (settings, database engine,
the predictor): a prefork child builds it, model included, in ``worker_process_init`` so the first
job does not pay for loading; the solo pool's process builds it before the worker starts
(worker.cli). Its settings are the ones ``dicom-node worker`` validated and gave the Celery app
(worker.celery_app.make_celery); process ``i`` of a CUDA worker uses GPU ``i mod count``.

A database that is away (OperationalError), or the node a remote worker fetches from
(dicom_node.pipeline.remote.RemoteError), makes the task retry itself with backoff (capped at
60 s, shorter than any visibility timeout); every other failure is recorded by the pipeline.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch
from billiard.process import current_process
from celery import current_app, shared_task, signals
from sqlalchemy.exc import OperationalError

from dicom_node.pipeline import analyse as analysis
from dicom_node.pipeline import export as exporting
from dicom_node.pipeline.remote import RemoteError
from dicom_node.pipeline.runtime import Runtime, resolve_device
from worker.celery_app import ANALYSE_TASK, EXPORT_TASK, settings_of

log = logging.getLogger(__name__)


def _process_index() -> int:
    return int(getattr(current_process(), "index", 0) or 0)


@functools.cache
def runtime() -> Runtime:
    """This process's runtime (built once)."""
    settings = settings_of(current_app)
    device = resolve_device(settings.worker.device, _process_index())
    rt = Runtime.create(settings, device=device)
    set_torch_threads(settings.worker.torch_threads, processes=settings.worker.concurrency or 1)
    log.debug("worker process %s: device %s", rt.worker_name, device)
    return rt


def set_torch_threads(threads: int | None, *, processes: int) -> None:
    """Torch CPU threads: the setting, or the cores shared out between the worker processes."""
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, processes)))


def warm_up() -> None:
    """Build the runtime and load the model now; a model that can not be loaded is logged here
    and fails each job with the reason (so an admin sees it) until it can be."""
    rt = runtime()
    try:
        rt.predictor()
    except Exception:
        log.exception("the model could not be loaded on %s; jobs will fail with the reason", rt.device)


@signals.worker_process_init.connect
def _child_init(**_: Any) -> None:
    warm_up()


def _redelivered(request: Any) -> bool:
    info = getattr(request, "delivery_info", None) or {}
    return bool(info.get("redelivered"))


# Both tasks: acknowledged after they finish, requeued when their worker dies, retried while the
# database is unreachable; results live in the database, not in a result backend.
_DURABLE: dict[str, Any] = dict(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, RemoteError),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=20,
    ignore_result=True,
)


@shared_task(name=ANALYSE_TASK, **_DURABLE)
def analyse(self: Any, job_id: int) -> str:
    """Analyse one job (dicom_node.pipeline.analyse.analyse)."""
    return analysis.analyse(runtime(), int(job_id), redelivered=_redelivered(self.request))


@shared_task(name=EXPORT_TASK, **_DURABLE)
def export(self: Any, job_id: int) -> dict[int, str]:
    """Send the job's due exports (dicom_node.pipeline.export.export_job)."""
    return exporting.export_job(runtime(), int(job_id))
