"""dicom_node.listener.refusal on loopback TCP connections: the A-ASSOCIATE-RJ after a whole request (read
through a small buffer, however long), the recorder called with the caller and the limit, the
bound on connections answered at once, and silence closed at the deadline."""

from __future__ import annotations

import socket
import struct
import time

from dicom_node.listener.refusal import LimitRefusals
from tests.harness.hostile import CT_IMAGE, EXPLICIT_LE, associate_rq
from tests.harness.peers import wait_until

REASON = "3 connection(s) from that address already open (listener.max_connections_per_address)"


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(the listener's end, the peer's end) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    return ours, theirs


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the listener sent before it closed (a reset, when it closed with bytes unread, counts
    as closed)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def test_a_long_request_is_answered_local_limit_exceeded_and_recorded() -> None:
    recorded: list[tuple[str, str, str]] = []
    refusals = LimitRefusals("COVIDNODE (port 1)", seconds=5, on_refused=lambda *args: recorded.append(args))
    ours, theirs = _tcp_pair()
    # 2,000 presentation contexts: about 100 KiB, read through the 16 KiB buffer.
    contexts = [(1 + 2 * (i % 128), CT_IMAGE, [EXPLICIT_LE]) for i in range(2000)]
    request = associate_rq("COVIDNODE", "CT_SCANNER", contexts)
    assert len(request) > 90_000
    assert refusals.take(ours, "10.0.0.9", REASON)
    theirs.sendall(request)
    answer = theirs.recv(10)
    theirs.close()
    assert answer == struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 0x02, 0x03, 0x02)
    wait_until(lambda: recorded, 5, "the refusal to be recorded")
    assert recorded == [
        ("CT_SCANNER", "10.0.0.9", f"{REASON}; A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded")
    ]
    wait_until(lambda: refusals.pending == 0, 5, "the refusal to end")


def test_silence_is_closed_at_the_deadline_and_more_than_max_pending_are_not_taken() -> None:
    recorded: list[tuple[str, str, str]] = []
    refusals = LimitRefusals(
        "COVIDNODE (port 1)", seconds=0.5, max_pending=1, on_refused=lambda *args: recorded.append(args)
    )
    ours, theirs = _tcp_pair()
    other, _ = _tcp_pair()
    started = time.monotonic()
    assert refusals.take(ours, "10.0.0.9", REASON)
    assert not refusals.take(other, "10.0.0.9", REASON)  # the caller closes it
    other.close()
    assert _read_all(theirs) == b""  # closed, unanswered
    assert 0.4 < time.monotonic() - started < 3
    wait_until(lambda: refusals.pending == 0, 5, "the refusal to end")
    assert recorded == []


def test_another_pdu_gets_an_a_abort_at_once() -> None:
    refusals = LimitRefusals("COVIDNODE (port 1)", seconds=5)
    ours, theirs = _tcp_pair()
    assert refusals.take(ours, "10.0.0.9", REASON)
    theirs.sendall(b"\x04\x00\xff\xff\xff\xf0" + b"\x00" * 64)  # a P-DATA-TF first
    started = time.monotonic()
    assert _read_all(theirs) == struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x02)
    assert time.monotonic() - started < 2
    wait_until(lambda: refusals.pending == 0, 5, "the refusal to end")
