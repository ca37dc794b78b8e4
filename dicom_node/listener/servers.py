"""Listener processes: one pynetdicom server per enabled local AE, kept in step with the database.

Every ``reload_seconds`` the AE table is read again: a new AE starts listening, a disabled or
removed one stops, a changed title/port/SOP class list restarts that AE's server. Several
processes can serve the same ports (SO_REUSEPORT): the kernel spreads associations over them, so
several senders at once use several cores.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
from typing import Callable, cast

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time; mypy can not see them
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import LocalAE
from dicom_node.listener.limits import Admission
from dicom_node.listener.reactor import EventDrivenServer, ReadLimits, quiet_pdu_logs, register_server
from dicom_node.listener.scp import TRANSFER_SYNTAXES, Receiver, accepted_sop_classes, fast_store_handler, handlers_for
from dicom_node.logs import configure_logging
from dicom_node.settings import Settings, TLSSettings
from dicom_node.storage.files import Storage
from dicom_node.storage.index import Index, ListenKey, LocalAESnapshot

log = logging.getLogger(__name__)


class ReusePortServer(EventDrivenServer):
    """The event-driven server with bounded admission (dicom_node.listener.reactor), bound with
    SO_REUSEPORT so sibling processes share a port."""

    # The fast lane's store handler of this server's local AE (dicom_node.listener.scp).
    store_handler: Callable[..., tuple[int, str]] | None = None

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
        self.storage = Storage(settings.storage_dir)
        self.index = Index(db)
        self.receiver = Receiver(self.storage, self.index, min_free_bytes=settings.listener.min_free_disk_mb * 1024 * 1024)
        self.ssl_context = make_ssl_context(settings.listener.tls)
        self._servers: dict[int, tuple[ListenKey, ThreadedAssociationServer, threading.Thread]] = {}
        self._stop = threading.Event()

    def desired(self) -> dict[int, LocalAESnapshot]:
        with self.db.sessionmaker() as s:
            rows = s.scalars(select(LocalAE).where(LocalAE.enabled.is_(True))).all()
            return {row.id: LocalAESnapshot.of(row) for row in rows}

    def reconcile(self) -> None:
        want = self.desired()
        for ae_id in list(self._servers):
            key, server, _ = self._servers[ae_id]
            if ae_id not in want or want[ae_id].listen_key() != key:
                log.info("stopping listener %s", key)
                server.shutdown()
                del self._servers[ae_id]
        for ae_id, snap in want.items():
            if ae_id in self._servers:
                continue
            try:
                server = self._start(snap)
            except OSError as exc:
                log.error("cannot listen as %s on port %d: %s", snap.title, snap.port, exc)
                continue
            thread = threading.Thread(target=server.serve_forever, name=f"listener-{snap.title}", daemon=True)
            thread.start()
            self._servers[ae_id] = (snap.listen_key(), server, thread)
            log.info("listening as %s on %s:%d%s", snap.title, self.settings.listener.host, snap.port, " (TLS)" if self.ssl_context else "")

    def _start(self, snap: LocalAESnapshot) -> ThreadedAssociationServer:
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
        server = cast(ReusePortServer, ae.make_server(
            (settings.host, snap.port),
            ae_title=snap.title,
            ssl_context=self.ssl_context,
            evt_handlers=handlers_for(snap, self.receiver, max_associations=settings.max_associations),
            server_class=ReusePortServer,
        ))
        server.store_handler = fast_store_handler(snap, self.receiver)
        server.admission = Admission(per_address=settings.max_connections_per_address, total=settings.max_connections)
        server.read_limits = ReadLimits.of(
            max_pdu_bytes=settings.max_pdu_bytes,
            pdu_read_seconds=settings.network_timeout_seconds,
            association_seconds=settings.association_timeout_seconds,
        )
        register_server(ae, server)
        return server

    def run(self) -> None:
        """Reconcile until stop() is called."""
        removed = self.storage.remove_stale_incoming()
        if removed:
            log.info("removed %d unacknowledged temporary file(s) left by a crash", removed)
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception:  # keep serving what is running; the next pass tries again
                log.exception("could not read the AE table")
            self._stop.wait(self.settings.listener.reload_seconds)
        self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for _, server, _ in self._servers.values():
            server.shutdown()
        self._servers.clear()

    @property
    def ports(self) -> list[int]:
        return sorted(key[1] for key, _, _ in self._servers.values())


def run_listener_process(settings_json: str) -> None:
    """Entry point of a listener child process (multiprocessing, spawn)."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings, process_name="listener")
    if settings.log_level != "DEBUG":
        quiet_pdu_logs()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with SIGTERM
    db = Database(settings.effective_database_url)
    listeners = ListenerSet(settings, db)
    signal.signal(signal.SIGTERM, lambda *_: listeners.stop())
    listeners.run()
    db.dispose()
