"""A pynetdicom storage SCP on a loopback port that answers with chosen statuses and records what
it got: the peer for tests of the sending side."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dicom_node.sending.scu import Peer
from tests.harness.peers import free_port
from tests.sending.dicom_files import OUTPUT_SOP_CLASSES


class Scp:
    """A storage SCP answering each C-STORE with ``statuses`` (by SOP Instance UID) or 0x0000."""

    def __init__(
        self, *, title: str = "PACS", sop_classes: Any = None, syntaxes: Any = None, max_associations: int = 10
    ) -> None:
        self.port = free_port()
        self.title = title
        self.statuses: dict[str, int] = {}
        self.default_status = 0x0000
        self.received: list[tuple[str, str]] = []  # (SOP Instance UID, transfer syntax)
        self.pixels: dict[str, bytes] = {}  # SOP Instance UID -> sha256 of its (float) pixel data
        self.associations = 0  # association requests (EVT_REQUESTED), accepted or not
        self.requested: list[tuple[str, list[str]]] = []
        self.delay = 0.0
        ae = AE(ae_title=title)
        ae.require_called_aet = True
        ae.maximum_associations = max_associations
        for uid in sop_classes if sop_classes is not None else OUTPUT_SOP_CLASSES.values():
            ae.add_supported_context(uid, syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae = ae

    def _store(self, event: Any) -> int:
        if self.delay:
            time.sleep(self.delay)
        ds = event.dataset
        self.received.append((str(ds.SOPInstanceUID), str(event.context.transfer_syntax)))
        for keyword in ("PixelData", "FloatPixelData"):
            if keyword in ds:
                self.pixels[str(ds.SOPInstanceUID)] = hashlib.sha256(ds[keyword].value).digest()
        return self.statuses.get(str(ds.SOPInstanceUID), self.default_status)

    def _requested(self, event: Any) -> None:
        self.associations += 1
        for cx in event.assoc.requestor.requested_contexts:
            self.requested.append((str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax]))

    def start(self) -> "Scp":
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_REQUESTED, self._requested)],
        )
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()

    @property
    def peer(self) -> Peer:
        return Peer(self.title, "127.0.0.1", self.port)


class Relay:
    """A TCP listener that closes its first ``drops`` connections at once, unanswered, and relays
    the later ones to ``port`` (a peer whose connection is reset in passing); with no ``port`` it
    holds them open and says nothing (a peer that never answers). It counts the connections."""

    def __init__(self, port: int | None, drops: int = 0) -> None:
        self.target = port
        self.drops = drops
        self.connections = 0
        self.held: list[socket.socket] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.drops:
                conn.close()
                continue
            if self.target is None:
                self.held.append(conn)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()
