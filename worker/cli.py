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

from dicom_node.commands.common import command, redact, settings_from
from dicom_node.db.engine import check_connection
from dicom_node.errors import Invalid, Unavailable
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
    from worker.celery_app import ANALYSE_QUEUE, EXPORT_QUEUE, check_broker, make_celery

    try:
        settings = worker_settings(settings_from(args), args)
    except ValidationError as exc:
        raise Invalid(f"invalid worker option: {exc.errors()[0]['msg']}") from None
    device = settings.worker.device
    if device == "cuda" and _gpu_count() == 0:
        raise Unavailable("--device cuda: no CUDA device is available")
    concurrency = settings.worker.concurrency or 1
    pool = settings.worker.pool if settings.worker.pool != "auto" else ("solo" if concurrency == 1 else "prefork")
    configure_logging(settings, process_name="worker")
    check_connection(settings.effective_database_url)
    app = make_celery(settings)
    check_broker(settings)
    if pool == "solo":
        tasks.warm_up()  # the solo pool runs jobs in this process
    log.info(
        "worker ready: %s pool, %d process(es), device %s, broker %s",
        pool,
        concurrency,
        device,
        redact(settings.effective_broker_url),
    )
    argv = [
        # Celery's banner only with -v; its log lines go through dicom_node.logs.
        *([] if settings.log_level == "DEBUG" else ["--quiet"]),
        "worker",
        "--pool", pool,
        "--concurrency", str(concurrency),
        "--loglevel", "INFO" if settings.log_level == "DEBUG" else "WARNING",  # Celery's own loggers (dicom_node.logs)
        "--queues", f"{EXPORT_QUEUE},{ANALYSE_QUEUE}",
        "--hostname", f"dicom-node-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    app.worker_main(argv)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "worker",
        "run an analysis and export worker (Celery) for this node",
        """
        DICOM_NODE_BROKER_URL=redis://127.0.0.1:6379/0 dicom-node worker --concurrency 2
        """,
        description="Run an analysis and export worker in the foreground (Ctrl+C stops it after the running job). "
        "It takes jobs from the broker (broker_url; the SQLite-file broker under the data dir when unset), analyses "
        "series with the model and sends the results. 'dicom-node up' starts one itself; run this on other machines, "
        "or beside 'dicom-node serve'",
    )
    p.add_argument("--concurrency", type=int, help="worker processes (default: 1 on CPU, one per GPU on CUDA)")
    p.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], help="where the model runs (default: the worker.device setting)"
    )
    p.add_argument(
        "--pool", choices=["solo", "prefork", "auto"], help="solo: jobs in this process; prefork: in children"
    )
    p.set_defaults(handler=cmd_worker)
