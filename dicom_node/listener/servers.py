"""Listener processes: one pynetdicom server per enabled local AE, kept in step with the database.

Every ``reload_seconds`` the AE table is read again: a new AE starts listening, a disabled or
removed one stops, a changed title/port/SOP class list restarts that AE's server. Several
processes of this node serve the same ports (SO_REUSEPORT): the kernel spreads associations over
them, so several senders at once use several cores; a lock per port (dicom_node.listener.ports)
keeps any other node out. A port that can not be bound is logged once and kept in the AE's
``listen_error`` (ae list, admin pages, /health) until it can.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import ssl
import threading
import time
from typing import Any, Callable, cast

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time; mypy can not see them
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select, update

from dicom_node.db import Database
from dicom_node.db.models import LocalAE
from dicom_node.db.times import utcnow
from dicom_node.listener.limits import REFUSAL_SECONDS, Admission, ReadLimits
from dicom_node.listener.ports import PortLock, PortTaken
from dicom_node.listener.reactor import EventDrivenServer, quiet_pdu_logs, register_server
from dicom_node.listener.refusal import LimitRefusals
from dicom_node.listener.scp import (
    TRANSFER_SYNTAXES,
    FastStore,
    accepted_sop_classes,
    fast_store_handler,
    handlers_for,
    receiver_for,
    refusal_recorder,
)
from dicom_node.logs import configure_logging
from dicom_node.settings import Settings, TLSSettings
from dicom_node.stopping import StopRequest
from dicom_node.storage.identity import data_dir_id
from dicom_node.storage.index import ListenKey, LocalAESnapshot

log = logging.getLogger(__name__)


class ReusePortServer(EventDrivenServer):
    """The event-driven server with bounded admission (dicom_node.listener.reactor), bound with
    SO_REUSEPORT so sibling processes share a port."""

    # Makes the fast lane's store handler of this server's local AE for an association (dicom_node.listener.scp).
    store_handler: Callable[[Any], FastStore] | None = None

    def server_bind(self) -> None:
        assert self.socket is not None
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def make_ssl_context(tls: TLSSettings) -> ssl.SSLContext | None:
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.cert_file), keyfile=str(tls.key_file))
    if tls.client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(tls.client_ca_file))
    return context


class ListenerSet:
    """The servers of one process, reconciled with the local_aes table."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        # Before a C-STORE would be answered 0xA700 for want of disk, the oldest finished series
        # are purged down to the low water mark (dicom_node.storage.retention).
        self.receiver = receiver_for(settings, db, actor=f"listener {os.getpid()}")
        self.storage = self.receiver.storage
        self.index = self.receiver.index
        self.ssl_context = make_ssl_context(settings.listener.tls)
        self._servers: dict[int, tuple[ListenKey, ThreadedAssociationServer, threading.Thread, PortLock]] = {}
        self._stop = StopRequest()  # stop() is called from a signal handler
        self.node_id = data_dir_id(settings.data_dir, create=True) or ""
        # The listen_error of each AE as the database has it, and the last one logged here.
        self._errors_in_db: dict[int, str] = {}
        self._errors_logged: dict[int, str] = {}

    def desired(self) -> dict[int, LocalAESnapshot]:
        with self.db.sessionmaker() as s:
            rows = s.scalars(select(LocalAE).where(LocalAE.enabled.is_(True))).all()
            self._errors_in_db = {row.id: row.listen_error or "" for row in rows}
            return {row.id: LocalAESnapshot.of(row) for row in rows}

    def reconcile(self) -> None:
        want = self.desired()
        for ae_id in list(self._servers):
            key, server, _, lock = self._servers[ae_id]
            if ae_id not in want or want[ae_id].listen_key() != key:
                log.info("stopping listener %s", key)
                server.shutdown()
                lock.release()
                del self._servers[ae_id]
        for ae_id, snap in want.items():
            if ae_id in self._servers:
                continue
            try:
                server, lock = self._start(snap)
            except OSError as exc:
                self._report(ae_id, snap, _listen_error(snap.port, exc))
                continue
            thread = threading.Thread(target=server.serve_forever, name=f"listener-{snap.title}", daemon=True)
            thread.start()
            self._servers[ae_id] = (snap.listen_key(), server, thread, lock)
            self._report(ae_id, snap, "")
            log.info(
                "listening as %s on %s:%d%s",
                snap.title,
                self.settings.listener.host,
                snap.port,
                " (TLS)" if self.ssl_context else "",
            )

    def _report(self, ae_id: int, snap: LocalAESnapshot, error: str) -> None:
        """Log a listen error once (not at every retry), and keep it in the AE's row for `ae
        list`, the admin pages and /health; "" clears it."""
        if error and self._errors_logged.get(ae_id) != error:
            log.error(
                "cannot listen as %s on port %d: %s; trying again every %g s",
                snap.title,
                snap.port,
                error,
                self.settings.listener.reload_seconds,
            )
        elif not error and self._errors_logged.get(ae_id):
            log.info("port %d is free again", snap.port)
        self._errors_logged[ae_id] = error
        if self._errors_in_db.get(ae_id, "") != error:
            with self.db.session() as s:
                s.execute(
                    update(LocalAE)
                    .where(LocalAE.id == ae_id)
                    .values(
                        listen_error=error[:200],
                        listen_error_at=utcnow() if error else None,
                        updated_at=LocalAE.updated_at,
                    )
                )
            self._errors_in_db[ae_id] = error

    def _start(self, snap: LocalAESnapshot) -> tuple[ThreadedAssociationServer, PortLock]:
        lock = PortLock(snap.port, self.node_id, str(self.settings.data_dir))
        lock.acquire()  # PortTaken: another node has it
        try:
            return self._make_server(snap), lock
        except BaseException:
            lock.release()
            raise

    def _make_server(self, snap: LocalAESnapshot) -> ThreadedAssociationServer:
        settings = self.settings.listener
        ae = AE(ae_title=snap.title)
        ae.maximum_pdu_size = settings.max_pdu_bytes
        ae.network_timeout = settings.network_timeout_seconds
        ae.acse_timeout = settings.association_timeout_seconds  # also ARTIM: a connection's time to negotiate
        ae.dimse_timeout = settings.network_timeout_seconds
        # pynetdicom would count every connection, negotiated or not; the limit on negotiated
        # associations is the node's own (dicom_node.listener.scp, at negotiation).
        ae.maximum_associations = 1_000_000
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for uid in accepted_sop_classes([*settings.extra_sop_classes, *snap.extra_sop_classes]):
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        # make_server returns an instance of server_class.
        server = cast(
            ReusePortServer,
            ae.make_server(
                (settings.host, snap.port),
                ae_title=snap.title,
                ssl_context=self.ssl_context,
                evt_handlers=handlers_for(snap, self.receiver, max_associations=settings.max_associations),
                server_class=ReusePortServer,
            ),
        )
        server.store_handler = fast_store_handler(snap, self.receiver)
        server.admission = Admission(per_address=settings.max_connections_per_address, total=settings.max_connections)
        server.read_limits = ReadLimits.from_settings(settings)
        # Connections over those limits: an A-ASSOCIATE-RJ, recorded as every refused association.
        server.refusals = LimitRefusals(
            f"{snap.title} (port {snap.port})",
            seconds=min(REFUSAL_SECONDS, settings.association_timeout_seconds),
            on_refused=refusal_recorder(snap, self.receiver),
        )
        register_server(ae, server)
        return server

    def run(self, ready: Any = None) -> None:
        """Reconcile until stop() is called; ``ready.set()`` after the first pass. (Temporaries
        left by a crash are removed by ``serve`` before its listeners start: a listener that is
        restarted beside running siblings must not remove theirs.)"""
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception:  # keep serving what is running; the next pass tries again
                log.exception("could not read the AE table")
            if ready is not None and not ready.is_set():
                ready.set()
            self._stop.wait(self.settings.listener.reload_seconds)
        self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for _, server, _, lock in self._servers.values():
            server.shutdown()
            lock.release()
        self._servers.clear()

    @property
    def ports(self) -> list[int]:
        return sorted(key[1] for key, _, _, _ in self._servers.values())


def _listen_error(port: int, exc: OSError) -> str:
    if isinstance(exc, PortTaken):
        return f"port in use: {exc.reason}"
    if exc.errno == errno.EADDRINUSE:
        return f"port in use: port {port} is held by another program"
    return f"cannot bind port {port}: {exc.strerror or exc}"


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG), so a
    listener never serves on as an orphan after a kill -9 of ``serve``; exit at once if the
    parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning(
                "prctl(PR_SET_PDEATHSIG) failed (errno %d): this listener may outlive its parent", ctypes.get_errno()
            )
    except (OSError, AttributeError):
        log.warning("prctl is not available here: this listener may outlive its parent")
    if os.getppid() != parent_pid:
        log.warning("parent process %d is gone before the listener started; exiting", parent_pid)
        raise SystemExit(0)


def run_listener_process(settings_json: str, ready: Any = None, parent_pid: int | None = None) -> None:
    """Entry point of a listener child process (multiprocessing, spawn). ``ready`` (an Event) is
    set once the ports have been bound (or tried); ``parent_pid``: die with that process."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings, process_name="listener")
    if settings.log_level != "DEBUG":
        quiet_pdu_logs()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with SIGTERM
    db = Database(settings.effective_database_url)
    listeners = ListenerSet(settings, db)
    signal.signal(signal.SIGTERM, lambda *_: listeners.stop())
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid, listeners), name="parent-watch", daemon=True).start()
    listeners.run(ready=ready)
    db.dispose()


def _watch_parent(parent_pid: int, listeners: ListenerSet, *, poll: float = 1.0, grace: float = 10.0) -> None:
    """Beside PR_SET_PDEATHSIG (which fires when the parent's *thread* that started us ends, and
    only on Linux): once the parent is gone, stop; a listener still running ``grace`` seconds later
    exits at once (what it had acknowledged is on disk already). Nothing on the way to that exit
    takes a lock that another thread may hold for ever (a lock or semaphore the dead parent held,
    such as the readiness event's): the stop and its log line run in a thread of their own."""
    while os.getppid() == parent_pid:
        time.sleep(poll)
    threading.Thread(target=_stop_orphan, args=(parent_pid, listeners), name="orphan-stop", daemon=True).start()
    time.sleep(grace)
    _write_stderr(f"the listener did not stop within {grace:g} s of its parent's death; exiting\n")
    os._exit(1)


def _stop_orphan(parent_pid: int, listeners: ListenerSet) -> None:
    log.warning("parent process %d is gone; this listener stops", parent_pid)
    listeners.stop()


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass
