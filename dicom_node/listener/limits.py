"""What one peer may cost a listener process: PDU lengths and read times, connections per remote
address, and log lines.

A DICOM port on a clinical network meets port scanners, broken senders and worse. Nothing a peer
sends may make a listener allocate without bound (:class:`ReadLimits`, which
dicom_node.listener.reactor applies to every PDU), hold every slot (:class:`Admission`:
connections per remote address and in all; dicom_node.listener.refusal answers a connection over
them), or fill the log (:class:`PeerLog`: a few lines a minute per peer and kind of error, then a
count of what was left out). No pynetdicom here: the reactor and the servers call these.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from dicom_node.settings import ListenerSettings

log = logging.getLogger("dicom_node.listener")

# Largest PDU other than P-DATA-TF accepted: an A-ASSOCIATE-RQ with 128 presentation contexts of
# many transfer syntaxes and a user identity is well under it.
MAX_CONTROL_PDU = 256 * 1024
# Largest P-DATA-TF accepted when listener.max_pdu_bytes is 0 (announced as unlimited).
MAX_UNLIMITED_PDU = 64 * 1024 * 1024
# A connection over a connection limit: its time to send its A-ASSOCIATE-RQ (a TLS handshake
# first, if any) before it is closed unanswered (at most ARTIM), and how many such connections are
# answered at once per listening socket (more are closed when accepted).
REFUSAL_SECONDS = 3.0
MAX_PENDING_REFUSALS = 32


@dataclass(frozen=True)
class ReadLimits:
    """What one PDU may cost: its length (checked on the 6-byte header, before anything of that
    size is allocated) and the time to read it whole. Before an association is negotiated
    (states Sta1/Sta2) the deadline is ARTIM's: ``association_seconds`` from the connection.
    The figures are the listener settings' (:meth:`from_settings`)."""

    max_pdata_bytes: int
    pdu_read_seconds: float
    association_seconds: float
    max_control_bytes: int = MAX_CONTROL_PDU

    @classmethod
    def from_settings(cls, listener: ListenerSettings) -> ReadLimits:
        return cls(
            max_pdata_bytes=listener.max_pdu_bytes if listener.max_pdu_bytes > 0 else MAX_UNLIMITED_PDU,
            pdu_read_seconds=listener.network_timeout_seconds,
            association_seconds=listener.association_timeout_seconds,
        )


# For a server not started by dicom_node.listener.servers (which sets the node's own): the
# listener settings' defaults.
DEFAULT_READ_LIMITS = ReadLimits.from_settings(ListenerSettings())


class PeerLog:
    """Rate-limited warnings per (peer address, kind): at most ``burst`` lines per ``window``
    seconds; the first line after a quiet spell says how many were left out."""

    def __init__(
        self,
        logger: logging.Logger = log,
        *,
        burst: int = 3,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        # (peer, kind) -> [window start, lines in this window, lines left out]
        self._state: dict[tuple[str, str], list[float]] = {}

    def warning(self, peer: str, kind: str, message: str, *args: object) -> int | None:
        """Log ``message % args`` unless this peer had ``burst`` lines of this kind in the window;
        returns None when it was not logged, else how many like it were left out before it."""
        now = self.clock()
        with self._lock:
            if len(self._state) > 10_000:  # many peers: forget the old windows
                self._state = {k: v for k, v in self._state.items() if now - v[0] < self.window}
            state = self._state.setdefault((peer, kind), [now, 0, 0])
            if now - state[0] >= self.window:
                left_out = int(state[2])
                state[:] = [now, 0, 0]
            else:
                left_out = 0
            if state[1] >= self.burst:
                state[2] += 1
                return None
            state[1] += 1
        suffix = f" ({left_out} more like it from {peer} in the last {self.window:g} s not logged)" if left_out else ""
        self.logger.warning(message + suffix, *args)
        return left_out


PEER_LOG = PeerLog()


class Admission:
    """Connections of one listening socket per remote address, and in all.

    ``admit`` is asked when a connection is accepted, before anything is read from it; ``release``
    when its association thread ends. Connections that never negotiate an association can then
    hold at most ``per_address`` slots per address, and no more than ``total`` in all; the limit
    on negotiated associations is applied at negotiation (dicom_node.listener.scp). A connection
    not admitted holds no slot: dicom_node.listener.refusal answers it."""

    def __init__(self, *, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total = total
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._total = 0

    def admit(self, host: str) -> str | None:
        """None when a connection from ``host`` is admitted (it holds a slot until ``release``),
        else which limit it is over."""
        with self._lock:
            count = self._open.get(host, 0)
            if count < self.per_address and self._total < self.total:
                self._open[host] = count + 1
                self._total += 1
                return None
            total = self._total
        if count >= self.per_address:
            return f"{count} connection(s) from that address already open (listener.max_connections_per_address)"
        return f"{total} connection(s) open in this listener process (listener.max_connections)"

    def release(self, host: str) -> None:
        with self._lock:
            count = self._open.get(host, 0) - 1
            if count > 0:
                self._open[host] = count
            else:
                self._open.pop(host, None)
            self._total = max(0, self._total - 1)
