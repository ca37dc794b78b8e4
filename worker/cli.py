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
import signal
import socket
import threading
import time

from pydantic import ValidationError

from dicom_node.commands.common import command, redact, settings_from
from dicom_node.db import Database
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


def _stop_with(parent: int, grace: float) -> None:
    """Started by ``up`` (process ``parent``): stop when it is gone, however it ended (a kill -9
    sends no SIGTERM of its own): a warm shutdown (the running job may finish), then after
    ``grace`` seconds this process group is killed (a job cut short goes to a worker again when
    its heartbeat is found lost)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("up (process %d) is gone: this worker stops too (a running job gets %g s)", parent, grace)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _clear_cache(settings: Settings) -> None:
    """A worker on another host: remove the series an earlier run left in its cache (killed
    mid-job), keeping those a live worker process of this host is analysing now."""
    from dicom_node.jobs.queries import running_series  # lazy: see the module docstring
    from dicom_node.pipeline.remote import NodeFiles, RemoteError

    db = Database(settings.effective_database_url)
    try:
        host = socket.gethostname()
        keep = {uid for uid, worker in running_series(db) if _alive_here(worker, host)}
    finally:
        db.dispose()
    try:
        NodeFiles(settings).clear_cache(keep)
    except RemoteError as exc:  # the node answers later; its jobs will say so
        log.warning("could not check this worker's cache against the node: %s", exc)


def _alive_here(worker: str, host: str) -> bool:
    name, _, pid = worker.rpartition(":")
    if name != host or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    if args.parent_pid:
        _stop_with(args.parent_pid, args.parent_grace)
    check_connection(settings.effective_database_url)
    if settings.remote.node_url:
        _clear_cache(settings)
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
    # Set by up for the worker it starts: stop when that process is gone.
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-grace", type=float, default=30.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], help="where the model runs (default: the worker.device setting)"
    )
    p.add_argument(
        "--pool", choices=["solo", "prefork", "auto"], help="solo: jobs in this process; prefork: in children"
    )
    p.set_defaults(handler=cmd_worker)
