"""Event-driven reactors for pynetdicom's association acceptor.

pynetdicom's DUL and association threads poll: each loop sleeps about a millisecond when it finds
nothing to do, and every C-STORE crosses several such loops (PDU in, DIMSE message to the service
thread, response back to the DUL). With a 512x512 CT image that is most of the time a store takes.
Here the same state machine, ACSE and DIMSE code runs, but the threads sleep until there is work:
the DUL thread in ``select()`` on the peer's socket and a wake-up socket, the association thread
on an event set whenever something is queued for it. Idle associations still wake every
``_IDLE_WAKE`` seconds to check timers, as the originals do every millisecond.

This is the one module of the node that reaches inside pynetdicom (private attributes, copies of
private methods, its private configuration and server registry); everything else uses its public
API. The copies follow pynetdicom 3.0.4, the version pyproject.toml pins (~=3.0.4).
:data:`RELIES_ON` lists what this module copies or touches: tests/listener/test_pynetdicom_seam.py
fails, naming the piece, as soon as an upgrade changes any of it. Then compare this module with
the new pynetdicom source, adapt it, and record the new fingerprints in that test. The tests in
tests/integration run the full protocol through this module against DCMTK.
"""

from __future__ import annotations

import functools
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from copy import deepcopy
from datetime import datetime
from typing import Any, Callable, cast

from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.errors import NodeError
from dicom_node.listener.fastlane import FastLane
from dicom_node.listener.limits import DEFAULT_READ_LIMITS, PEER_LOG, REFUSAL_SECONDS, Admission, ReadLimits
from dicom_node.listener.refusal import LimitRefusals

LOGGER = logging.getLogger("pynetdicom")

_IDLE_WAKE = 0.05  # seconds: how often an idle thread checks timers and kill flags
# A-ABORT (PS3.8 9.3.8): source "DUL service provider", reason "not specified"; what pynetdicom sends.
_ABORT_SOURCE_PROVIDER = 0x02
_ABORT_REASON_NOT_SPECIFIED = 0x00
_ABORT_REASON_UNRECOGNISED_PDU = 0x01
_ABORT_REASON_INVALID_PARAMETER = 0x06
_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
_P_DATA_TF = 0x04
LISTEN_BACKLOG = 1024
# What the acceptor's wait for its A-ASSOCIATE-RQ takes as "none came" (receive_pdu() -> None).
_NO_PRIMITIVE: Any = None


class PeerTimeout(NodeError, TimeoutError):
    """A PDU that did not arrive whole before its deadline."""


# What this module copies from or relies on inside pynetdicom (see the module docstring).
RELIES_ON: tuple[str, ...] = (
    "pynetdicom.dul.DULServiceProvider.__init__",  # the queues replaced by EventDrivenDUL
    "pynetdicom.dul.DULServiceProvider._read_pdu_data",  # copied: EventDrivenDUL._read_pdu_data
    "pynetdicom.dul.DULServiceProvider.run_reactor",  # copied: EventDrivenDUL.run_reactor
    "pynetdicom.dul.DULServiceProvider.kill_dul",  # extended
    "pynetdicom.dul.DULServiceProvider._decode_pdu",  # called by the copies
    "pynetdicom.dul.DULServiceProvider._process_recv_primitive",
    "pynetdicom.dul.DULServiceProvider._is_transport_event",
    "pynetdicom.association.Association.__init__",  # the DUL and DIMSE queue replaced
    "pynetdicom.association.Association._run_reactor",  # copied: EventDrivenAssociation._run_reactor
    "pynetdicom.association.Association.kill",  # extended
    "pynetdicom.association.Association._serve_request",  # called by the copy
    "pynetdicom.transport.AssociationSocket.recv",  # replaced: FastSocket.recv
    "pynetdicom.transport.RequestHandler._create_association",  # copied: EventDrivenRequestHandler
    "pynetdicom.transport.RequestHandler.handle",  # copied: EventDrivenRequestHandler.handle
    "pynetdicom.transport.AssociationServer.get_request",  # copied: EventDrivenServer (TLS handshake deferred)
    "pynetdicom.transport.AssociationSocket.close",  # called to close after an A-ABORT
    "pynetdicom.association.Association.run_reactor",  # its wait for the A-ASSOCIATE-RQ ends on a None primitive
    "pynetdicom.transport.AssociationServer.shutdown",  # removes the server from AE._servers
    "pynetdicom._config.LOG_HANDLER_LEVEL",
    "pynetdicom._globals.MODE_ACCEPTOR",
)


def register_server(ae: AE, server: AssociationServer) -> None:
    """Register a server made with ``AE.make_server`` with its AE, as ``AE.start_server`` does
    (it takes no server class): ``server.shutdown()`` removes it from there again."""
    ae._servers.append(cast(ThreadedAssociationServer, server))  # pynetdicom lists its threaded servers there


def quiet_pdu_logs() -> None:
    """pynetdicom's standard handlers describe every PDU and message for its debug log, decoding
    each command set to do so; without DEBUG nobody reads them."""
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"


class _WakingQueue(queue.Queue[Any]):
    """A queue that calls ``wake()`` after every put."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class EventDrivenDUL(DULServiceProvider):
    """The DUL thread, sleeping in select() instead of time.sleep()."""

    def __init__(self, assoc: Association, user_wake: threading.Event) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Primitives from the local user (responses to send) wake this thread; primitives for
        # the user (A-RELEASE, A-ABORT) wake the association thread.
        self.to_provider_queue = _WakingQueue(self.wake)
        self.fast_lane: FastLane | None = None
        self.to_user_queue = _WakingQueue(user_wake.set)
        self.event_queue = _WakingQueue(self.wake)
        self.read_limits = DEFAULT_READ_LIMITS
        self._connected_at = time.monotonic()

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closing

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def _peer(self) -> str:
        try:
            return str(self.assoc.requestor.address)
        except Exception:  # not known yet
            return "?"

    def _read_deadline(self) -> float:
        """Before the association is negotiated, ARTIM's expiry counted from the connection;
        after, ``pdu_read_seconds`` from now for this PDU."""
        limits = self.read_limits
        if self.state_machine.current_state in ("Sta1", "Sta2"):
            return self._connected_at + limits.association_seconds
        return time.monotonic() + limits.pdu_read_seconds

    def _transport_closed(self) -> None:
        """Evt17; before an A-ASSOCIATE-RQ came, also wake the association thread waiting for
        one (pynetdicom's waits the whole ACSE timeout), so the connection's admission slot is
        given back at once."""
        self.event_queue.put("Evt17")
        if self.state_machine.current_state in ("Sta1", "Sta2"):
            self.to_user_queue.put(_NO_PRIMITIVE)  # receive_pdu() returns None: "no A-ASSOCIATE-RQ", the thread ends

    def _refuse(self, kind: str, reason: str, abort_reason: int) -> None:
        """A protocol error: log it (rate-limited per peer), send an A-ABORT and close the
        connection at once (PS3.8 AA-1/AA-8 would wait for the peer to close; a peer that sends
        garbage does not)."""
        peer = self._peer()
        PEER_LOG.warning(
            peer,
            kind,
            "protocol error from %s (state %s): %s; A-ABORT sent, connection closed",
            peer,
            self.state_machine.current_state,
            reason,
        )
        sock = self.socket
        if sock is None:
            self._transport_closed()
            return
        raw = sock.socket
        if raw is not None:
            abort_pdu = A_ABORT_RQ()
            abort_pdu.source = _ABORT_SOURCE_PROVIDER
            abort_pdu.reason_diagnostic = abort_reason
            try:
                raw.settimeout(1.0)
                raw.sendall(abort_pdu.encode())
            except (OSError, ValueError):
                pass
        closed_by_close = raw is not None and sock.socket is not None and sock._is_connected
        sock.close()  # puts Evt17 (transport closed) when it was connected
        if not closed_by_close:
            self.event_queue.put("Evt17")
        if self.state_machine.current_state in ("Sta1", "Sta2"):
            self.to_user_queue.put(_NO_PRIMITIVE)

    def _read_pdu_data(self) -> None:
        """pynetdicom's PDU reader, bounded: a PDU longer than the limits is refused on its
        header, before anything of that size is allocated; the whole PDU must arrive before a
        deadline (a partial PDU then silence is refused); anything malformed is answered with an
        A-ABORT and the connection closed. P-DATA-TF PDUs are offered to the fast lane first."""
        sock = self.socket
        assert isinstance(sock, FastSocket)
        limits = self.read_limits
        deadline = self._read_deadline()
        try:
            header = sock.recv_exact(6, deadline)
        except PeerTimeout:
            self._refuse(
                "timeout",
                f"no complete PDU within {limits.pdu_read_seconds:g} s (or association not negotiated within "
                f"{limits.association_seconds:g} s)",
                _ABORT_REASON_NOT_SPECIFIED,
            )
            return
        except (OSError, ValueError):
            self._transport_closed()
            return
        if len(header) < 6:
            self._transport_closed()
            return
        pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_TYPES:
            self._refuse("garbage", f"unknown PDU type 0x{pdu_type:02X}", _ABORT_REASON_UNRECOGNISED_PDU)
            return
        limit = limits.max_pdata_bytes if pdu_type == _P_DATA_TF else limits.max_control_bytes
        if pdu_length > limit:
            self._refuse(
                "garbage",
                f"PDU type 0x{pdu_type:02X} of {pdu_length} bytes, more than the {limit} accepted",
                _ABORT_REASON_INVALID_PARAMETER,
            )
            return
        try:
            body = sock.recv_exact(pdu_length, deadline)
        except PeerTimeout:
            self._refuse(
                "timeout",
                f"PDU type 0x{pdu_type:02X} of {pdu_length} bytes not complete within its deadline",
                _ABORT_REASON_NOT_SPECIFIED,
            )
            return
        except (OSError, ValueError):
            self._transport_closed()
            return
        if len(body) != pdu_length:
            PEER_LOG.warning(
                self._peer(),
                "closed",
                "connection from %s closed within a PDU (%d of %d bytes)",
                self._peer(),
                len(body) + 6,
                pdu_length + 6,
            )
            self._transport_closed()
            return
        bytestream = bytes(header + body)
        del body
        if pdu_type == _P_DATA_TF and self.fast_lane is not None and self.state_machine.current_state == "Sta6":
            try:
                rest = self.fast_lane.take(bytestream)
            except (ValueError, struct.error) as exc:
                self._refuse("garbage", f"invalid P-DATA-TF PDU: {exc}", _ABORT_REASON_INVALID_PARAMETER)
                return
            if rest is None:
                return
            bytestream = rest
        try:
            pdu, event = self._decode_pdu(bytearray(bytestream))
        except Exception as exc:
            self._refuse(
                "garbage",
                f"PDU type 0x{pdu_type:02X} cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}",
                _ABORT_REASON_INVALID_PARAMETER,
            )
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _wait_for_work(self) -> None:
        if self.to_provider_queue.qsize() or self.event_queue.qsize():
            return
        sock = self.socket.socket if self.socket is not None else None
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        readers: list[Any] = [self._wake_r]
        if sock is not None and sock.fileno() >= 0:
            readers.append(sock)
        try:
            select.select(readers, [], [], _IDLE_WAKE)
        except (OSError, ValueError):
            return  # the socket closed under us; the transport check reports it
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop with ``time.sleep(delay)`` replaced by ``_wait_for_work()``."""
        self._idle_timer.start()
        sleep = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    sleep = True
                if sleep:
                    self._wait_for_work()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception:
                    # As pynetdicom does: bypass the state machine, send an A-ABORT, stop.
                    abort_pdu = A_ABORT_RQ()
                    abort_pdu.source = _ABORT_SOURCE_PROVIDER
                    abort_pdu.reason_diagnostic = _ABORT_REASON_NOT_SPECIFIED
                    if self.socket is not None:
                        self.socket.send(abort_pdu.encode())
                    self.assoc.is_aborted = True
                    self.assoc.is_established = False
                    self.assoc._kill = True
                    self._kill_thread = True
                    raise
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    sleep = True
                    continue
                self.state_machine.do_action(event)
                sleep = False
        finally:
            if self.fast_lane is not None:
                self.fast_lane.close()
            self._wake_r.close()
            self._wake_w.close()


class FastSocket(AssociationSocket):
    """Reads a PDU with few large recv_into() calls instead of 4 KiB recv()s, before a deadline."""

    # Sends block at most this long (a peer that stops reading): set by the request handler.
    send_timeout: float | None = 60.0

    def recv(self, nr_bytes: int) -> bytearray:
        return self.recv_exact(nr_bytes, None)

    def recv_exact(self, nr_bytes: int, deadline: float | None) -> bytearray:
        """``nr_bytes`` bytes, fewer if the peer closed first; :class:`PeerTimeout` when
        ``deadline`` (time.monotonic()) passes first."""
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        nr_read = 0
        try:
            while nr_read < nr_bytes:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PeerTimeout(f"{nr_read} of {nr_bytes} bytes before the deadline")
                    sock.settimeout(remaining)
                try:
                    n = sock.recv_into(view[nr_read:], min(nr_bytes - nr_read, 1 << 20))
                except TimeoutError:
                    raise PeerTimeout(f"{nr_read} of {nr_bytes} bytes before the deadline") from None
                if n == 0:
                    break
                nr_read += n
        finally:
            view.release()
            if deadline is not None:
                try:
                    sock.settimeout(self.send_timeout)
                except OSError:
                    pass
        if nr_read < nr_bytes:
            del buffer[nr_read:]
        return buffer


class EventDrivenAssociation(Association):
    """An acceptor whose reactor waits on an event instead of polling every millisecond."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._user_wake = threading.Event()
        self.dul = EventDrivenDUL(self, self._user_wake)
        self.dimse.msg_queue = _WakingQueue(self._user_wake.set)
        # Timeouts live partly on the DUL: set them again on the new one.
        self.acse_timeout = self.ae.acse_timeout
        self.connection_timeout = self.ae.connection_timeout
        self.dimse_timeout = self.ae.dimse_timeout
        self.network_timeout = self.ae.network_timeout

        # Called once when this association's thread ends (dicom_node.listener.limits.Admission).
        self.on_finished: Callable[[], None] | None = None

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.on_finished is not None:
                self.on_finished()

    def kill(self) -> None:
        self._user_wake.set()
        super().kill()

    def _has_user_work(self) -> bool:
        return bool(self.dimse.msg_queue.qsize() or self.dul.to_user_queue.qsize())

    def _run_reactor(self) -> None:
        """pynetdicom's association loop, waiting on ``_user_wake`` instead of sleeping."""
        self._is_paused = False
        while not self._kill:
            # Clear before looking, so a put after the look sets the event again.
            self._user_wake.clear()
            if not self._has_user_work():
                self._user_wake.wait(_IDLE_WAKE)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]  # as pynetdicom's loop: a message comes with its context id

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventDrivenRequestHandler(RequestHandler):
    """Creates :class:`EventDrivenAssociation` acceptors (otherwise as pynetdicom's handler)."""

    server: "EventDrivenServer"

    def handle(self) -> None:
        """pynetdicom's handle(), with the admission slot of this connection given back when
        its association ends (or at once, if it never starts)."""
        admission = getattr(self.server, "admission", None)
        host = str(self.client_address[0])
        try:
            assoc = self._create_association()
            if admission is not None:
                assert isinstance(assoc, EventDrivenAssociation)
                assoc.on_finished = functools.partial(admission.release, host)
        except BaseException:
            if admission is not None:
                admission.release(host)
            raise
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        try:
            assoc.start()
        except BaseException:
            if admission is not None:
                admission.release(host)
            raise

    def _create_association(self) -> Association:
        assoc = EventDrivenAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        client = self.request
        assert isinstance(client, socket.socket)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limits = getattr(self.server, "read_limits", None) or DEFAULT_READ_LIMITS
        client.settimeout(limits.pdu_read_seconds)
        fast_socket = FastSocket(assoc, client_socket=client)
        fast_socket.send_timeout = limits.pdu_read_seconds
        assoc.set_socket(fast_socket)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        store = getattr(self.server, "store_handler", None)  # set by dicom_node.listener.servers
        dul = assoc.dul
        if isinstance(dul, EventDrivenDUL):
            dul.read_limits = limits
        if store is not None and isinstance(dul, EventDrivenDUL) and dul.socket is not None:
            dul.fast_lane = FastLane(store(assoc), functools.partial(_accepted_transfer_syntax, assoc), dul.socket.send)
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                # A notification event's handlers: a list of (handler, its extra arguments).
                for handler, args in cast(list[tuple[Callable[..., Any], list[Any] | None]], handlers):
                    assoc.bind(event, handler, args)
        return assoc


class EventDrivenServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with bounded admission: a long listen backlog; each
    connection admitted by :attr:`admission` before anything is read from it, or else answered
    by :attr:`refusals` with an A-ASSOCIATE-RJ, holding no slot and no association; the TLS
    handshake done in the connection's own thread under its deadlines, not in the accept loop
    (where one silent peer would stop every other); acceptors from
    :class:`EventDrivenRequestHandler`."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    admission: Admission | None = None
    refusals: LimitRefusals | None = None
    read_limits: ReadLimits = DEFAULT_READ_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", EventDrivenRequestHandler)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True, do_handshake_on_connect=False)
        return client_socket, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for an admitted connection's association; one that is not admitted goes to
        :attr:`refusals` (or is closed at once when they are busy)."""
        if self.admission is None:
            super().process_request(request, client_address)
            return
        host = str(client_address[0])
        reason = self.admission.admit(host)
        if reason is None:
            super().process_request(request, client_address)
            return
        if self.refusals is None:
            self.refusals = LimitRefusals(
                f"{self.ae_title} (port {self.server_address[1]})",
                seconds=min(REFUSAL_SECONDS, self.read_limits.association_seconds),
            )
        if not self.refusals.take(request, host, reason):
            self.shutdown_request(request)


def _accepted_transfer_syntax(assoc: Association, context_id: int) -> str | None:
    context = assoc._accepted_cx.get(context_id)
    if context is None or not context.transfer_syntax:
        return None
    return str(context.transfer_syntax[0])
