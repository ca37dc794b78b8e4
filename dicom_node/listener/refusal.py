"""A connection over a listener's connection limits, answered with an A-ASSOCIATE-RJ.

A connection that dicom_node.listener.limits.Admission does not admit (more than
``listener.max_connections_per_address`` from its address, or ``listener.max_connections`` in all)
gets no pynetdicom association and holds no admission slot. A short-lived thread of its own reads
its A-ASSOCIATE-RQ (PS3.8 9.3.2) within ``seconds`` (after the TLS handshake, if any), keeping the
PDU's fixed fields (the AE titles) and counting the rest away, answers the A-ASSOCIATE-RJ an
association over ``listener.max_associations`` gets too (dicom_answers.LOCAL_LIMIT_REJECTION:
rejected-transient, DICOM UL service-provider (presentation), local-limit-exceeded), waits a moment
for the peer to close (Sta13), and closes. The refusal is then logged and recorded by
``on_refused``, the same function as every other refused association of the local AE
(dicom_node.listener.scp.refusal_recorder, a few a minute per peer).

A peer that sends nothing, or something else than an A-ASSOCIATE-RQ, is closed at its deadline, or
at once with an A-ABORT; what is read is bounded by a small buffer whatever the PDU length says. At
most ``max_pending`` connections are answered at once per listening socket; beyond that a
connection is closed as it is accepted, with a log line. No pynetdicom here: the PDUs are 10 bytes.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from typing import Callable

from dicom_node.dicom_answers import LOCAL_LIMIT_ANSWER, LOCAL_LIMIT_REJECTION
from dicom_node.errors import NodeError
from dicom_node.listener.limits import MAX_CONTROL_PDU, MAX_PENDING_REFUSALS, PEER_LOG, REFUSAL_SECONDS, PeerLog

log = logging.getLogger("dicom_node.listener")

# (calling AE title, remote address, reason): logs and records one refused association.
RefusalRecorder = Callable[[str, str, str], None]

_A_ASSOCIATE_RQ = 0x01
_A_ASSOCIATE_RJ = 0x03
_A_ABORT = 0x07
_KNOWN_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
# An A-ASSOCIATE-RQ's fixed fields (PS3.8 Table 9-11): protocol version, reserved, called AE
# title, calling AE title (bytes 20-35), 32 reserved bytes; the variable items follow.
_RQ_FIXED_BYTES = 68
_CALLING_AE = slice(20, 36)
_DRAIN_BYTES = 16 * 1024
# How long the peer has to close its end after the A-ASSOCIATE-RJ (PS3.8 Sta13).
_CLOSE_WAIT_SECONDS = 1.0
# A-ABORT source "DICOM UL service-provider" and its reasons (PS3.8 Table 9-26).
_ABORT_SOURCE_PROVIDER = 0x02
_ABORT_UNRECOGNISED_PDU = 0x01
_ABORT_UNEXPECTED_PDU = 0x02
_ABORT_INVALID_PARAMETER = 0x06


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return struct.pack(">BBIBBBB", _A_ASSOCIATE_RJ, 0, 4, 0, result, source, reason)


def a_abort(source: int, reason: int) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8)."""
    return struct.pack(">BBIBBBB", _A_ABORT, 0, 4, 0, 0, source, reason)


LOCAL_LIMIT_RJ = associate_rj(*LOCAL_LIMIT_REJECTION)


class _Unanswered(NodeError):
    """The connection gets no A-ASSOCIATE-RJ; the message says what happened instead."""


class LimitRefusals:
    """Answers the connections of one listening socket (``local`` names it in the log) that were not
    admitted; see the module docstring."""

    def __init__(
        self,
        local: str,
        *,
        seconds: float = REFUSAL_SECONDS,
        max_pending: int = MAX_PENDING_REFUSALS,
        on_refused: RefusalRecorder | None = None,
        peer_log: PeerLog = PEER_LOG,
    ) -> None:
        self.local = local
        self.seconds = seconds
        self.max_pending = max_pending
        self.on_refused = on_refused
        self.peer_log = peer_log
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Connections being answered now."""
        with self._lock:
            return self._pending

    def take(self, sock: socket.socket, host: str, reason: str) -> bool:
        """Answer ``sock`` (not admitted: ``reason``) in a thread of its own, which closes it; False
        when ``max_pending`` are being answered already: then the caller closes it at once."""
        with self._lock:
            pending = self._pending
            if pending < self.max_pending:
                self._pending += 1
        if pending >= self.max_pending:
            self._unanswered(host, reason, f"closed at once ({pending} refusals being answered)")
            return False
        try:
            threading.Thread(target=self._run, args=(sock, host, reason), name="limit-refusal", daemon=True).start()
        except RuntimeError as exc:  # no thread to be had
            self._finished()
            self._unanswered(host, reason, f"closed at once ({exc})")
            return False
        return True

    def _run(self, sock: socket.socket, host: str, reason: str) -> None:
        try:
            try:
                calling_ae = self._answer(sock)
            except _Unanswered as exc:
                self._unanswered(host, reason, str(exc))
                return
            except Exception as exc:  # keep the listener serving whatever happened here
                self._unanswered(host, reason, f"closed ({type(exc).__name__}: {exc})")
                return
            finally:
                _close(sock)
            refusal = f"{reason}; {LOCAL_LIMIT_ANSWER}"
            if self.on_refused is not None:
                self.on_refused(calling_ae, host, refusal)
            else:
                self.peer_log.warning(
                    host,
                    "association refused",
                    "association refused: %s@%s to %s: %s",
                    calling_ae,
                    host,
                    self.local,
                    refusal,
                )
        except Exception:
            log.exception("recording the refusal of a connection from %s to %s failed", host, self.local)
        finally:
            self._finished()

    def _answer(self, sock: socket.socket) -> str:
        """Read the A-ASSOCIATE-RQ, send the A-ASSOCIATE-RJ; the calling AE title."""
        deadline = time.monotonic() + self.seconds
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.settimeout(self.seconds)
                sock.do_handshake()
            except TimeoutError:
                raise _Unanswered(f"no TLS handshake within {self.seconds:g} s: closed") from None
            except (OSError, ValueError) as exc:
                raise _Unanswered(f"TLS handshake failed ({exc}): closed") from None
        header = _read(sock, 6, deadline, self.seconds)
        pdu_type, _, length = struct.unpack(">BBI", header)
        if pdu_type != _A_ASSOCIATE_RQ or not _RQ_FIXED_BYTES <= length <= MAX_CONTROL_PDU:
            if pdu_type not in _KNOWN_PDU_TYPES:
                abort_reason = _ABORT_UNRECOGNISED_PDU
            elif pdu_type != _A_ASSOCIATE_RQ:
                abort_reason = _ABORT_UNEXPECTED_PDU
            else:
                abort_reason = _ABORT_INVALID_PARAMETER
            _send(sock, a_abort(_ABORT_SOURCE_PROVIDER, abort_reason))
            raise _Unanswered(
                f"PDU type 0x{pdu_type:02X} of {length} bytes instead of an A-ASSOCIATE-RQ: A-ABORT sent, closed"
            )
        fixed = _read(sock, _RQ_FIXED_BYTES, deadline, self.seconds)
        _drain(sock, length - _RQ_FIXED_BYTES, deadline, self.seconds)
        if not _send(sock, LOCAL_LIMIT_RJ):
            raise _Unanswered("closed by the peer before the A-ASSOCIATE-RJ could be sent")
        _wait_closed(sock, time.monotonic() + _CLOSE_WAIT_SECONDS)
        return bytes(fixed[_CALLING_AE]).decode("ascii", "replace").strip()

    def _unanswered(self, host: str, reason: str, what: str) -> None:
        self.peer_log.warning(
            host, "admission", "connection from %s to %s refused: %s; %s", host, self.local, reason, what
        )

    def _finished(self) -> None:
        with self._lock:
            self._pending -= 1


def _read(sock: socket.socket, nr_bytes: int, deadline: float, seconds: float) -> bytearray:
    """``nr_bytes`` bytes before ``deadline``; :class:`_Unanswered` otherwise."""
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    nr_read = 0
    try:
        while nr_read < nr_bytes:
            nr_read += _recv_into(sock, view[nr_read:], deadline, seconds)
    finally:
        view.release()
    return buffer


def _drain(sock: socket.socket, nr_bytes: int, deadline: float, seconds: float) -> None:
    """Read ``nr_bytes`` bytes before ``deadline`` into one small buffer, keeping none."""
    scratch = bytearray(min(nr_bytes, _DRAIN_BYTES))
    view = memoryview(scratch)
    try:
        while nr_bytes > 0:
            nr_bytes -= _recv_into(sock, view[: min(nr_bytes, len(scratch))], deadline, seconds)
    finally:
        view.release()


def _recv_into(sock: socket.socket, view: memoryview, deadline: float, seconds: float) -> int:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _Unanswered(f"no whole A-ASSOCIATE-RQ within {seconds:g} s: closed")
    try:
        sock.settimeout(remaining)
        nr_read = sock.recv_into(view, len(view))
    except TimeoutError:
        raise _Unanswered(f"no whole A-ASSOCIATE-RQ within {seconds:g} s: closed") from None
    except (OSError, ValueError) as exc:
        raise _Unanswered(f"connection lost before its A-ASSOCIATE-RQ ({exc})") from None
    if nr_read == 0:
        raise _Unanswered("closed by the peer before a whole A-ASSOCIATE-RQ")
    return nr_read


def _send(sock: socket.socket, pdu: bytes) -> bool:
    try:
        sock.settimeout(_CLOSE_WAIT_SECONDS)
        sock.sendall(pdu)
        return True
    except (OSError, ValueError):
        return False


def _wait_closed(sock: socket.socket, deadline: float) -> None:
    """Until the peer closes its end or ``deadline`` passes, discarding what it sends."""
    scratch = bytearray(4096)
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            sock.settimeout(remaining)
            if sock.recv_into(scratch) == 0:
                return
        except (OSError, ValueError):
            return


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
