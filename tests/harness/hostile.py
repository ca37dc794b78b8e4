"""Hostile and broken peers for the reliability tests and benchmarks: raw sockets speaking (or
not speaking) the DICOM upper layer, a seeded fuzz generator, and the listener processes' memory.

Everything here writes bytes by hand (PS3.8 9.3): the point is to send what a real toolkit never
would. DCMTK's storescu stays the well-behaved sender the tests check against.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Iterator

import psutil
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicom_node.listener.fastlane import p_data_tf

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + (b"\x00" if len(raw) % 2 else b"")


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def associate_rq(
    called: str,
    calling: str,
    contexts: list[tuple[int, str, list[str]]] | None = None,
    *,
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU; ``contexts``: (id, abstract syntax, transfer syntaxes)."""
    contexts = contexts if contexts is not None else [(1, CT_IMAGE, [EXPLICIT_LE, IMPLICIT_LE])]
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for cid, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        items += _item(0x20, struct.pack(">BBBB", cid, 0, 0, 0) + sub)
    items += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()[:16]
        + calling.ljust(16).encode()[:16]
        + b"\x00" * 32
        + items
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _element(group: int, element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", group, element, len(value)) + value


def store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (implicit VR little endian), a data set to follow."""
    body = b"".join(
        [
            _element(0, 0x0002, sop_class.encode()),
            _element(0, 0x0100, struct.pack("<H", 0x0001)),
            _element(0, 0x0110, struct.pack("<H", message_id)),
            _element(0, 0x0700, struct.pack("<H", 0)),
            _element(0, 0x0800, struct.pack("<H", 0x0000)),
            _element(0, 0x1000, sop_instance.encode()),
        ]
    )
    return _element(0, 0x0000, struct.pack("<I", len(body))) + body


class Peer:
    """One raw TCP connection to the listener, optionally from a given local address (127.0.0.2
    and so on: loopback has them all), for hostile senders distinct from the real one."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", source: str | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read_pdu(self) -> tuple[int, bytes] | None:
        """(type, body) of the next PDU, None when the connection is closed."""
        header = self._read(6)
        if len(header) < 6:
            return None
        pdu_type, _, length = struct.unpack(">BBI", header)
        body = self._read(length)
        return (pdu_type, body) if len(body) == length else None

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except (ConnectionResetError, BrokenPipeError):
                return out
            if not chunk:
                return out
            out += chunk
        return out

    def closed_within(self, seconds: float) -> tuple[bool, list[int]]:
        """Read until the listener closes the connection; (closed, types of the PDUs read)."""
        deadline = time.monotonic() + seconds
        seen: list[int] = []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                pdu = self.read_pdu()
            except TimeoutError:
                return False, seen
            except OSError:
                return True, seen
            if pdu is None:
                return True, seen
            seen.append(pdu[0])
        return False, seen

    def associate(
        self, called: str, calling: str, contexts: list[tuple[int, str, list[str]]] | None = None
    ) -> tuple[int, bytes]:
        """Send an A-ASSOCIATE-RQ; the answer's (type, body): 0x02 accepted, 0x03 rejected."""
        self.send(associate_rq(called, calling, contexts))
        answer = self.read_pdu()
        if answer is None:
            raise AssertionError("the listener closed the connection instead of answering the A-ASSOCIATE-RQ")
        return answer

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def accepted_contexts(associate_ac: bytes) -> dict[int, str]:
    """Context id -> transfer syntax of the accepted presentation contexts of an A-ASSOCIATE-AC body."""
    out: dict[int, str] = {}
    pos = 68
    while pos + 4 <= len(associate_ac):
        item_type, _, length = struct.unpack_from(">BBH", associate_ac, pos)
        body = associate_ac[pos + 4 : pos + 4 + length]
        if item_type == 0x21 and body[2] == 0:
            ts_len = struct.unpack_from(">H", body, 6)[0]
            out[body[0]] = body[8 : 8 + ts_len].rstrip(b"\x00").decode()
        pos += 4 + length
    return out


def store_status(pdu: tuple[int, bytes] | None) -> int | None:
    """The Status (0000,0900) of a C-STORE-RSP in a P-DATA-TF PDU."""
    if pdu is None or pdu[0] != 0x04:
        return None
    data = pdu[1][6:]
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        if (group, element) == (0, 0x0900):
            return int(struct.unpack_from("<H", data, pos + 8)[0])
        pos += 8 + length
    return None


def send_store(
    peer: Peer,
    context_id: int,
    sop_class: str,
    sop_instance: str,
    dataset: bytes,
    *,
    max_pdu: int = 16000,
    message_id: int = 1,
) -> int | None:
    """One C-STORE over an established association: the response status, None if none came."""
    peer.send(p_data_tf(context_id, 0x03, store_command(sop_class, sop_instance, message_id)))
    chunks = [dataset[i : i + max_pdu] for i in range(0, len(dataset), max_pdu)] or [b""]
    for n, chunk in enumerate(chunks):
        peer.send(p_data_tf(context_id, 0x02 if n == len(chunks) - 1 else 0x00, chunk))
    return store_status(peer.read_pdu())


def send_endless(
    peer: Peer, context_id: int, sop_class: str, sop_instance: str, total: int, *, fragment: int = 16384
) -> int:
    """A C-STORE-RQ whose data set goes on for ``total`` bytes in fragments of ``fragment`` bytes,
    none of them the last; returns the bytes sent (fewer if the listener closed first)."""
    if not peer.send(p_data_tf(context_id, 0x03, store_command(sop_class, sop_instance))):
        return 0
    pdu = p_data_tf(context_id, 0x00, b"\x00" * fragment)
    sent = 0
    while sent < total:
        if not peer.send(pdu):
            break
        sent += fragment
    return sent


def deflate_bomb(sop_instance: str, inflated: int, *, block: int = 16 * 1024 * 1024) -> bytes:
    """A Deflated Explicit VR Little Endian CT data set of about ``inflated`` bytes once inflated
    (a Pixel Data of zeros), about a thousandth of that deflated. Made in a fraction of a second:
    one block of zeros deflated after a full flush deflates to the same bytes every time."""
    blocks = max(1, inflated // block)
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = "2.25.9" + "0" * 30
    ds.SeriesInstanceUID = "2.25.9" + "0" * 29 + "1"
    ds.Modality = "CT"
    ds.PatientID = "BOMB"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 512, 512, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    head = fp.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, blocks * block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return start + zeros * blocks + compressor.flush()


class RssPeak:
    """The largest resident set of a ``serve`` process's listeners while the ``with`` block runs,
    sampled every ``interval`` seconds."""

    def __init__(self, serve_pid: int, interval: float = 0.05) -> None:
        self.serve_pid = serve_pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, max_listener_rss(self.serve_pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssPeak":
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, max_listener_rss(self.serve_pid))


# --- the listener's processes ------------------------------------------------------------------


def listener_processes(serve_pid: int) -> list[psutil.Process]:
    """The listener children of a ``serve`` process (multiprocessing spawn children)."""
    try:
        children = psutil.Process(serve_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def exited(processes: list[psutil.Process]) -> bool:
    """Whether every one of ``processes`` has ended (gone, or a zombie nobody has reaped yet: an
    orphan's new parent may never reap it)."""
    for proc in processes:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def max_listener_rss(serve_pid: int) -> int:
    """The largest resident set of the listener processes, in bytes."""
    sizes = []
    for proc in listener_processes(serve_pid):
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.Error:
            continue
    return max(sizes, default=0)


# --- the fuzz generator ------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzCase:
    """One connection's worth of hostile input: ``chunks`` sent in turn; ``associate``: whether a
    valid A-ASSOCIATE-RQ from an allowed AE goes first (the chunks then hit the established
    association: P-DATA fragments and data sets)."""

    number: int
    kind: str
    associate: bool
    chunks: tuple[bytes, ...]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        what = rng.random()
        if not buf or what < 0.15:
            buf += rng.randbytes(rng.randint(1, 64))
        elif what < 0.5:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif what < 0.65:
            pos = rng.randrange(len(buf))
            del buf[pos : pos + rng.randint(1, 32)]
        elif what < 0.8:
            pos = rng.randrange(max(1, len(buf) - 4))
            buf[pos : pos + 4] = struct.pack(">I", rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)]))
        else:
            pos = rng.randrange(len(buf))
            buf[pos:pos] = buf[pos : pos + rng.randint(1, 64)]
    return bytes(buf)


# The SOP Instance UID of the data set handed to fuzz_cases: each case puts a fresh one of the
# same length in its place, so that a mutated data set may still be whole and stored.
PLACEHOLDER_UID = "2.25." + "1" * 39


def fresh_uid(rng: random.Random) -> str:
    return f"2.25.{rng.randrange(10**38, 10**39)}"


def fuzz_cases(seed: int, count: int, *, called: str, calling: str, dataset: bytes) -> Iterator[FuzzCase]:
    """``count`` cases from ``seed`` (the same seed, the same cases): mutated A-ASSOCIATE-RQs,
    random and truncated PDUs, and, inside an association, mutated P-DATA fragments, command sets
    and data sets behind a valid C-STORE-RQ. ``dataset``: a valid CT data set (Explicit VR
    Little Endian) whose SOP Instance UID is :data:`PLACEHOLDER_UID`."""
    rng = random.Random(seed)
    for number in range(count):
        kind = rng.choice(["associate", "random", "header", "pdata", "dataset", "command"])
        if kind == "associate":
            yield FuzzCase(number, kind, False, (_mutate(rng, associate_rq(called, calling)),))
        elif kind == "random":
            yield FuzzCase(number, kind, False, (rng.randbytes(rng.randint(1, 4096)),))
        elif kind == "header":
            pdu_type = rng.choice([0x01, 0x02, 0x04, 0x05, 0x07, 0x09, 0xFF])
            length = rng.choice([0, 1, 6, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)])
            tail = rng.randbytes(rng.randint(0, 64))
            yield FuzzCase(number, kind, rng.random() < 0.5, (struct.pack(">BBI", pdu_type, 0, length) + tail,))
        elif kind == "pdata":
            uid = fresh_uid(rng)
            pdus = [p_data_tf(1, 0x03, store_command(CT_IMAGE, uid)), p_data_tf(1, 0x02, dataset[:2048])]
            victim = rng.randrange(len(pdus))
            pdus[victim] = _mutate(rng, pdus[victim])
            yield FuzzCase(number, kind, True, tuple(pdus))
        elif kind == "dataset":
            uid = fresh_uid(rng)
            body = _mutate(rng, dataset.replace(PLACEHOLDER_UID.encode(), uid.encode()))
            yield FuzzCase(
                number, kind, True, (p_data_tf(1, 0x03, store_command(CT_IMAGE, uid)), p_data_tf(1, 0x02, body[:60000]))
            )
        else:
            uid = fresh_uid(rng)
            yield FuzzCase(
                number,
                kind,
                True,
                (p_data_tf(1, 0x03, _mutate(rng, store_command(CT_IMAGE, uid))), p_data_tf(1, 0x02, dataset[:2048])),
            )


def store_responses(pdus: list[tuple[int, bytes]]) -> list[tuple[str, int]]:
    """(Affected SOP Instance UID, Status) of the C-STORE-RSPs in these PDUs."""
    out = []
    for pdu_type, body in pdus:
        if pdu_type != 0x04:
            continue
        pos = 0
        while pos + 6 <= len(body):
            (length,) = struct.unpack_from(">I", body, pos)
            data = body[pos + 6 : pos + 4 + length]
            pos += 4 + length
            fields: dict[int, bytes] = {}
            i = 0
            while i + 8 <= len(data):
                group, element, vlen = struct.unpack_from("<HHI", data, i)
                fields[(group << 16) | element] = data[i + 8 : i + 8 + vlen]
                i += 8 + vlen
            if 0x00000900 in fields and 0x00001000 in fields:
                out.append(
                    (
                        fields[0x00001000].rstrip(b"\x00 ").decode(errors="replace"),
                        int(struct.unpack("<H", fields[0x00000900][:2])[0]),
                    )
                )
    return out


@dataclass
class FuzzReport:
    cases: int = 0
    refused_connections: int = 0
    successes: list[str] = field(default_factory=list)
    failures: int = 0
    seconds: float = 0.0


def fuzz_dataset(rows: int = 32, columns: int = 32) -> bytes:
    """A whole CT data set (Explicit VR Little Endian) whose SOP Instance UID is PLACEHOLDER_UID."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = PLACEHOLDER_UID
    ds.StudyInstanceUID = "2.25.8" + "0" * 30
    ds.SeriesInstanceUID = "2.25.8" + "0" * 29 + "1"
    ds.Modality = "CT"
    ds.PatientID = "FUZZ"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(rows * columns * 2)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def run_fuzz(port: int, cases: Iterator[FuzzCase], *, called: str, calling: str) -> FuzzReport:
    """Send each case on its own connection, then half-close and read what comes back until the
    listener closes (at most 10 s a case). Returns the SOP instances answered with Success."""
    report = FuzzReport()
    started = time.monotonic()
    for case in cases:
        report.cases += 1
        try:
            peer = Peer(port, timeout=10)
        except OSError:
            report.refused_connections += 1
            continue
        pdus: list[tuple[int, bytes]] = []
        try:
            if case.associate:
                answer = peer.associate(called, calling, [(1, CT_IMAGE, [EXPLICIT_LE])])
                if answer[0] != 0x02:
                    raise AssertionError(f"case {case.number}: association refused: {answer}")
            for chunk in case.chunks:
                if not peer.send(chunk):
                    break
            try:
                peer.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            while True:
                pdu = peer.read_pdu()
                if pdu is None:
                    break
                pdus.append(pdu)
        except (TimeoutError, OSError):
            pass
        finally:
            peer.close()
        for uid, status in store_responses(pdus):
            if status == 0:
                report.successes.append(uid)
            else:
                report.failures += 1
    report.seconds = time.monotonic() - started
    return report
