"""``dicom-node worker``: a Celery worker of this node (the analysis and export queues).

The command-line options override the ``worker`` settings in this process; the settings are
handed to worker.tasks before Celery starts, so the worker process and its prefork children use
the same ones. Torch and Celery are imported inside the handler, so that registering the command
costs nothing.
"""

from __future__ import annotations

import argparse
import logging
import os

from pydantic import ValidationError

from dicom_node.commands.common import fail, redact, settings_from
from dicom_node.logs import configure_logging
from dicom_node.settings import Settings, WorkerSettings

log = logging.getLogger(__name__)


def _gpu_count() -> int:
    # NVML answers without initialising CUDA in this process, which prefork children would
    # otherwise inherit half set up.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch  # lazy: see the module docstring

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with the command line's worker options and the resolved concurrency."""
    chosen = {k: getattr(args, k) for k in ("device", "concurrency", "pool") if getattr(args, k, None) is not None}
    worker = WorkerSettings.model_validate({**settings.worker.model_dump(), **chosen})
    if worker.concurrency is None:
        gpus = _gpu_count() if worker.device in ("cuda", "auto") else 0
        worker = WorkerSettings.model_validate({**worker.model_dump(), "concurrency": max(1, gpus)})
    return settings.model_copy(update={"worker": worker})


def cmd_worker(args: argparse.Namespace) -> int:
    from worker import tasks  # lazy: Celery, and torch for the solo pool
    from worker.celery_app import ANALYSE_QUEUE, EXPORT_QUEUE, make_celery

    try:
        settings = worker_settings(settings_from(args), args)
    except ValidationError as exc:
        return fail(f"invalid worker option: {exc.errors()[0]['msg']}")
    device = settings.worker.device
    if device == "cuda" and _gpu_count() == 0:
        return fail("--device cuda: no CUDA device is available")
    concurrency = settings.worker.concurrency or 1
    pool = settings.worker.pool if settings.worker.pool != "auto" else ("solo" if concurrency == 1 else "prefork")
    configure_logging(settings, process_name="worker")
    app = make_celery(settings)
    if pool == "solo":
        tasks.warm_up()  # the solo pool runs jobs in this process
    log.info("worker: %s pool, %d process(es), device %s, broker %s", pool, concurrency, device, redact(settings.effective_broker_url))
    argv = [
        "worker",
        "--pool", pool,
        "--concurrency", str(concurrency),
        "--loglevel", settings.log_level,
        "--queues", f"{EXPORT_QUEUE},{ANALYSE_QUEUE}",
        "--hostname", f"dicom-node-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    app.worker_main(argv)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run an analysis and export worker (Celery) for this node")
    p.add_argument("--concurrency", type=int, help="worker processes (default: 1 on CPU, one per GPU on CUDA)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="where the model runs (default: the worker.device setting)")
    p.add_argument("--pool", choices=["solo", "prefork", "auto"], help="solo: jobs in this process; prefork: in children")
    p.set_defaults(handler=cmd_worker)
