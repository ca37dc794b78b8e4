"""Sub-commands of the worker side: ``worker``, ``jobs list|retry|export`` and ``up``.

``dicom-node up`` is the one-machine mode: ``serve`` (listeners, completion, the outbox relay and
its housekeeping, the admin app when installed) in this process and ``dicom-node worker`` as a
child process, restarted if it dies. With no database or broker configured it uses the embedded
defaults: SQLite files under the data dir, nothing else to install. With no local AE at all it
creates one (``--ae-title``, ``--port``) and says so; the calling-AE allow-list stays on, so
nothing is accepted until a source is added.

What ``up`` guarantees on the SQLite-file broker: Ctrl-C or SIGTERM stops the listeners, then
asks the worker for a warm shutdown (a running job finishes, up to ``--shutdown-seconds``;
unacknowledged messages go back to the broker). A job whose worker was killed (SIGKILL, power
loss) is lost by that broker, but not by the node: its heartbeat stops and the next ``up`` (or
the running one) requeues it after ``worker.lost_after_seconds``; exports queued or sending are
re-sent after ``export.stale_after_seconds``. Each job still completes exactly once in effect:
outputs have deterministic UIDs and the job state machine lets one attempt finish.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from dicom_node.node_cli import database_from, fail, settings_from

log = logging.getLogger(__name__)


# --- worker --------------------------------------------------------------------------------


def _apply_overrides(args: argparse.Namespace) -> None:
    """Command-line options become settings (through the environment, so prefork children and
    every later load_settings see the same values)."""
    for option, env in (("device", "DEVICE"), ("concurrency", "CONCURRENCY"), ("pool", "POOL")):
        value = getattr(args, option, None)
        if value is not None:
            os.environ[f"DICOM_NODE_WORKER__{env}"] = str(value)


def _gpu_count() -> int:
    # NVML answers without initialising CUDA in this process, which prefork children would
    # otherwise inherit half set up.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cmd_worker(args: argparse.Namespace) -> int:
    from dicom_node.logs import configure_logging
    from worker.celery_app import ANALYSE_QUEUE, EXPORT_QUEUE, make_celery

    _apply_overrides(args)
    settings = settings_from(args)
    device = settings.worker.device
    if device == "cuda" and _gpu_count() == 0:
        return fail("--device cuda: no CUDA device is available")
    gpus = _gpu_count() if device in ("cuda", "auto") else 0
    concurrency = settings.worker.concurrency or max(1, gpus)
    os.environ["DICOM_NODE_WORKER__CONCURRENCY"] = str(concurrency)
    pool = settings.worker.pool if settings.worker.pool != "auto" else ("solo" if concurrency == 1 else "prefork")
    settings = settings_from(args)
    configure_logging(settings, process_name="worker")
    app = make_celery(settings)
    if pool == "solo":
        from worker import tasks

        tasks.warm_up()  # the solo pool runs jobs in this process
    log.info("worker: %s pool, %d process(es), device %s, broker %s", pool, concurrency, device, _redact(settings.effective_broker_url))
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


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    if url.startswith(("redis", "rediss")):
        return url.split("@")[-1] if "@" in url else url
    return make_url(url.split("+", 1)[1] if url.startswith("sqla+") else url).render_as_string(hide_password=True)


# --- jobs ----------------------------------------------------------------------------------


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from dicom_node.queries import job_rows

    db = database_from(args)
    try:
        rows = job_rows(db, status=args.status, limit=args.limit)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        exports = ", ".join(f"{e['destination']}:{e['status']}({e['attempts']})" for e in r["exports"]) or "-"
        print(f"{r['id']:>6} {r['status']:<11} {r['decision'] or '-':<12} attempts {r['attempts']}  {r['series_uid']}  exports {exports}")
        if r["reason"]:
            print(f"       {r['reason']}")
    print("Not for clinical use.")
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    from dicom_node.completion import requeue_job
    from dicom_node.db.models import ACTIVE_JOB_STATUSES, Job

    db = database_from(args)
    try:
        with db.session() as s:
            job = s.get(Job, args.job_id)
            if job is None:
                return fail(f"job {args.job_id} does not exist")
            status = job.status
        if status in {st.value for st in ACTIVE_JOB_STATUSES} and not args.force:
            return fail(f"job {args.job_id} is {status}; wait for it, or use --force to run it again anyway")
        message_id = requeue_job(db, args.job_id, reason="retry requested on the command line")
    finally:
        db.dispose()
    print(json.dumps({"job_id": args.job_id, "status": "pending", "outbox_message": message_id}))
    return 0


def cmd_jobs_export(args: argparse.Namespace) -> int:
    from worker.exports import reexport

    settings = settings_from(args)
    db = database_from(args)
    try:
        ids = reexport(db, args.job_id, destination=args.destination, default_outputs=settings.export.default_outputs)
    except ValueError as exc:
        return fail(str(exc))
    finally:
        db.dispose()
    print(json.dumps({"job_id": args.job_id, "exports": ids, "status": "pending"}))
    return 0


# --- up ------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: a SIGTERM when the parent (thread) dies (Linux)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerSupervisor(threading.Thread):
    """Runs ``dicom-node worker`` as a child process in its own session (Ctrl-C reaches it only
    through :meth:`stop`) and starts it again if it exits, waiting 2, 4 ... 60 s between starts."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__(name="worker-supervisor", daemon=True)
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        delay = 2.0
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = subprocess.Popen(self.argv, start_new_session=True, preexec_fn=_die_with_parent)
            log.info("worker process %d started", self.proc.pid)
            code = self.proc.wait()
            if self._stopping.is_set():
                return
            log.error("worker process %d exited with %s; starting another in %.0f s", self.proc.pid, code, delay)
            if self._stopping.wait(delay):
                return
            delay = min(60.0, delay * 2)

    def stop(self, timeout: float) -> None:
        """Warm shutdown (SIGTERM: a running job may finish), SIGKILL after ``timeout`` seconds."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        log.info("stopping the worker (up to %.0f s for a running job)", timeout)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker did not stop in %.0f s; killing it (its job is requeued at the next start)", timeout)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.join(5)


def ensure_local_ae(settings: Any, title: str, port: int) -> str | None:
    """Create a local AE when none exists; return a notice or None. The calling-AE allow-list
    stays on: nothing is accepted until a source is added."""
    from sqlalchemy import func, select

    from dicom_node import configuration as c
    from dicom_node.db import Database
    from dicom_node.db.models import LocalAE

    db = Database(settings.effective_database_url)
    try:
        with db.session() as s:
            if s.scalar(select(func.count()).select_from(LocalAE)):
                return None
            c.add_local_ae(s, c.parse(c.LocalAEIn, {"title": title, "port": port}))
    finally:
        db.dispose()
    return (
        f"no local AE was configured: listening as {title} on port {port}. No calling AE is allowed yet: "
        "allow a scanner or PACS with `dicom-node ae add-source TITLE [--host H]`; send results to PACS with "
        "`dicom-node ae add-destination` and `dicom-node ae update-local "
        f"{title} --send-results-to DEST`"
    )


def cmd_up(args: argparse.Namespace) -> int:
    from dicom_node.db import upgrade
    from dicom_node.logs import configure_logging
    from dicom_node.service import Node

    settings = settings_from(args)
    configure_logging(settings, process_name="up")
    upgrade(settings.effective_database_url)
    notice = ensure_local_ae(settings, args.ae_title, args.port)
    if notice:
        log.warning("%s", notice)
    argv = [sys.executable, "-m", "dicom_node.cli"]
    if getattr(args, "config", None):
        argv += ["--config", args.config]
    argv.append("worker")
    supervisor = WorkerSupervisor(argv)
    supervisor.start()
    try:
        code = Node(settings, admin=not args.no_admin).run()
    finally:
        supervisor.stop(args.shutdown_seconds)
    return code


# --- registration --------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run an analysis and export worker (Celery) for this node")
    p.add_argument("--concurrency", type=int, help="worker processes (default: 1 on CPU, one per GPU on CUDA)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="where the model runs (default: the worker.device setting)")
    p.add_argument("--pool", choices=["solo", "prefork", "auto"], help="solo: jobs in this process; prefork: in children")
    p.set_defaults(handler=cmd_worker)

    jobs = sub.add_parser("jobs", help="analysis jobs and their exports")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = jobs_sub.add_parser("list", help="jobs, newest first, with decision, timings and exports per destination")
    p.add_argument("--json", action="store_true")
    p.add_argument("--status", help="only jobs in this status")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(handler=cmd_jobs_list)
    p = jobs_sub.add_parser("retry", help="run a job's analysis again, then export its results")
    p.add_argument("job_id", type=int)
    p.add_argument("--force", action="store_true", help="also when the job is pending, queued or running")
    p.set_defaults(handler=cmd_jobs_retry)
    p = jobs_sub.add_parser("export", help="send a done job's results again (all destinations, or one)")
    p.add_argument("job_id", type=int)
    p.add_argument("--destination", metavar="TITLE", help="only to this destination (added if the job never had it)")
    p.set_defaults(handler=cmd_jobs_export)

    p = sub.add_parser("up", help="everything on one machine: listeners, admin app and a worker (embedded defaults)")
    p.add_argument("--no-admin", action="store_true", help="do not serve the admin app")
    p.add_argument("--ae-title", default="COVIDNODE", help="local AE created when none is configured (default COVIDNODE)")
    p.add_argument("--port", type=int, default=11112, help="its port (default 11112)")
    p.add_argument("--shutdown-seconds", type=float, default=30.0, help="how long a running job may take to finish at shutdown")
    p.set_defaults(handler=cmd_up)
