"""``dicom-node serve`` and ``dicom-node up``.

``serve``: listeners, series completion, the scheduling of lost jobs and due exports, the outbox
relay and the admin app (dicom_node.service).

``up`` is the one-machine mode: ``serve`` in this process and ``dicom-node worker`` as a child
process, restarted if it dies. With no database or broker configured it uses the embedded
defaults: SQLite files under the data dir, nothing else to install. With no local AE at all it
creates one (``--ae-title``, ``--port``, the completion defaults of the settings) and says so; the
calling-AE allow-list stays on, so nothing is accepted until a source is added.

What ``up`` guarantees on the SQLite-file broker: Ctrl-C or SIGTERM stops the listeners, then
asks the worker for a warm shutdown (a running job finishes, up to ``--shutdown-seconds``;
unacknowledged messages go back to the broker). A job whose worker was killed (SIGKILL, power
loss) is lost by that broker, but not by the node: its heartbeat stops and the next ``up`` (or
the running one) requeues it after ``worker.lost_after_seconds``; exports queued or sending are
re-sent after ``export.stale_after_seconds``. Each job still completes exactly once in effect:
outputs have deterministic UIDs and the job state machine lets one attempt finish.

The service (pynetdicom, and FastAPI for the admin app) is imported inside the handlers, so that
the other commands start quickly.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading

from sqlalchemy import func, select

from dicom_node.commands.common import check_port_free, command, settings_from
from dicom_node.configuration import ensure_local_ae
from dicom_node.db import Database, upgrade
from dicom_node.db.models import LocalAE
from dicom_node.logs import configure_logging
from dicom_node.settings import Settings

log = logging.getLogger(__name__)


def check_ports(settings: Settings, db: Database, *, admin: bool) -> None:
    """Refuse to start, saying which and what to do, when a port the node would listen on is
    taken (the listeners would otherwise fail in their own processes, the admin app in a thread)."""
    with db.session() as s:
        local = [(ae.title, ae.port) for ae in s.scalars(select(LocalAE).where(LocalAE.enabled.is_(True)))]
    for title, port in local:
        check_port_free(
            settings.listener.host,
            port,
            f"local AE {title}",
            f"if it is not a node using {settings.data_dir} (that one would move too), move the AE to a free "
            f"port: dicom-node ae update-local {title} --port N",
        )
    if admin:
        check_port_free(
            settings.admin.host,
            settings.admin_port,
            "admin app",
            "choose another: DICOM_NODE_ADMIN_PORT=8081, or --no-admin",
        )


def _prepare(settings: Settings, args: argparse.Namespace, *, create_ae: bool) -> None:
    """Database migrated, the default AE made (``up``), ports free: what must hold before the
    node starts anything."""
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    try:
        if create_ae:
            with db.session() as s:
                if not s.scalar(select(func.count()).select_from(LocalAE)):
                    check_port_free(
                        settings.listener.host,
                        args.port,
                        f"local AE {args.ae_title}",
                        "choose another: dicom-node up --port N",
                    )
            notice = ensure_local_ae(db, args.ae_title, args.port, settings.completion)
            if notice:
                log.warning("%s", notice)
        check_ports(settings, db, admin=not args.no_admin)
    finally:
        db.dispose()


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.service import Node  # lazy: pynetdicom and the admin app

    settings = settings_from(args)
    configure_logging(settings, process_name="serve")
    _prepare(settings, args, create_ae=False)
    return Node(settings, admin=not args.no_admin).run()


def _die_with_parent() -> None:
    """In the child before exec: a SIGTERM when the parent (thread) dies (Linux)."""
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
            log.debug("worker process %d started", self.proc.pid)
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


def cmd_up(args: argparse.Namespace) -> int:
    from dicom_node.service import Node  # lazy: pynetdicom and the admin app

    settings = settings_from(args)
    configure_logging(settings, process_name="up")
    _prepare(settings, args, create_ae=True)
    argv = [sys.executable, "-m", "dicom_node.cli"]
    if getattr(args, "config", None):
        argv += ["--config", args.config]
    # The worker ends with this process however it ends: PR_SET_PDEATHSIG (a SIGTERM) and, should
    # that not stop it, its own watch of its parent (worker.cli).
    argv += ["worker", "--parent-pid", str(os.getpid()), "--parent-grace", str(args.shutdown_seconds)]
    supervisor = WorkerSupervisor(argv)
    supervisor.start()
    try:
        code = Node(settings, admin=not args.no_admin).run()
    finally:
        supervisor.stop(args.shutdown_seconds)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "serve",
        "run the listeners, series completion and the admin app (workers run apart)",
        """
        export DICOM_NODE_DATABASE_URL=postgresql://dicom:secret@db/dicom_node
        export DICOM_NODE_BROKER_URL=redis://redis:6379/0
        dicom-node serve
        """,
        description="Run the DICOM listeners (one port per local AE), series completion, the queueing of jobs and "
        "the admin app in the foreground, without a worker: run 'dicom-node worker' beside it, on this machine or "
        "others, sharing its database and broker. Ctrl+C (or SIGTERM) stops it. For one machine, 'dicom-node up' "
        "does both",
    )
    p.add_argument("--no-admin", action="store_true", help="do not serve the admin app")
    p.set_defaults(handler=cmd_serve)

    p = command(
        sub,
        "up",
        "everything on one machine: listeners, admin app and a worker (embedded defaults)",
        """
        dicom-node up
        dicom-node up --ae-title CTAI --port 11113
        """,
        description="Run everything on this machine in the foreground: the DICOM listeners, the admin app "
        "(http://127.0.0.1:8080) and a worker. With no database or broker configured it keeps both in SQLite files "
        "under the data dir (nothing else to install). With no local AE it makes one (COVIDNODE on port 11112), "
        "which accepts nobody until a source is added (dicom-node ae add-source). Ctrl+C stops it; a running job may "
        "finish first",
    )
    p.add_argument("--no-admin", action="store_true", help="do not serve the admin app")
    p.add_argument(
        "--ae-title", default="COVIDNODE", help="local AE created when none is configured (default COVIDNODE)"
    )
    p.add_argument("--port", type=int, default=11112, help="its port (default 11112)")
    p.add_argument(
        "--shutdown-seconds",
        type=float,
        default=30.0,
        help="how long a running job may take to finish at shutdown (default 30)",
    )
    p.set_defaults(handler=cmd_up)
