"""The sending role: C-STORE SCU of result objects to a destination (a PACS).

One call of :func:`send_files` is one batch over one association, opened and released here, so an
association is never shared between threads. Each output SOP class present in the batch is
requested explicitly with Explicit and Implicit VR Little Endian (and, in its own presentation
context, the file's transfer syntax when that is another one, e.g. RLE Lossless or Deflated Explicit
VR Little Endian; a peer that takes only the uncompressed ones gets the object uncompressed). Files
are sent as stored, in chunks, never decoded whole where the peer takes their syntax; a deflated one
a peer takes only uncompressed is inflated to a temporary file a piece at a time (:func:`_sendable`).

Every answer is classified (the Conformance Statement, docs/conformance.md 4.2.2, lists the same):

- success: 0x0000 and the storage warnings 0xB000, 0xB006, 0xB007 (any other warning, 0x0001 or
  0xBxxx, is also kept as sent: the peer stored the object);
- retriable: no answer (pynetdicom returns an empty Dataset on a timeout or an abort), 0xA7xx (out
  of resources), 0x0110 (processing failure: a peer's generic failure, often passing), no TCP
  connection, an association request left unanswered within the timeout (a peer that is
  overloaded or stalled has said nothing yet, so nothing was refused), an association aborted,
  and an A-ASSOCIATE-RJ whose result is "rejected (transient)" (PS3.8 7.1.1.7 says such a
  rejection may succeed later; the retries back off, so no storm);
- permanent: 0xA9xx, 0xCxxx, every other failure status (0x0122 SOP class not supported, 0x0124
  not authorised, 0x0111 duplicate...), an association rejected for good ("rejected
  (permanent)", e.g. an unknown called AE title), and a SOP class the peer accepts in no
  presentation context. A permanent refusal is not retried.

A batch's outcome is its worst object: permanent over retriable over success. Objects after a
retriable failure that ended the association are not attempted; after a permanent refusal of one
object the others are still sent.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import ssl
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import split_dataset
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import A_P_ABORT

from dicom_node.dicom_answers import SUCCESS_STATUSES, AssociateResult, Status

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# A C-STORE of a file path sends the file's encoded data set in chunks, undecoded (:func:`_sendable`
# passes a path only when the peer took the file's own transfer syntax). The node's one C-STORE SCU
# is this module; the setting is pynetdicom's, for the process.
pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True


class Outcome(str, enum.Enum):
    SUCCESS = "success"
    RETRIABLE = "retriable"
    PERMANENT = "permanent"


_SEVERITY = {Outcome.SUCCESS: 0, Outcome.RETRIABLE: 1, Outcome.PERMANENT: 2}


def worst(outcomes: Sequence[Outcome]) -> Outcome:
    """The most severe of ``outcomes`` (SUCCESS for none)."""
    return max(outcomes, key=_SEVERITY.__getitem__, default=Outcome.SUCCESS)


def status_name(code: int | None) -> str:
    """``NAME (0xXXXX)`` for a status code; ``no response`` for None."""
    if code is None:
        return "no response"
    try:
        return f"{Status(code).name} (0x{code:04X})"
    except ValueError:
        return f"0x{code:04X}"


def classify_status(code: int | None) -> Outcome:
    """Success, retriable or permanent for one C-STORE response status (None: no response)."""
    if code is None:
        return Outcome.RETRIABLE
    if code in SUCCESS_STATUSES or code == Status.OPTIONAL_ATTRIBUTES_NOT_SUPPORTED or code & 0xF000 == 0xB000:
        return Outcome.SUCCESS
    if code & 0xFF00 == Status.OUT_OF_RESOURCES & 0xFF00 or code == Status.PROCESSING_FAILURE:
        return Outcome.RETRIABLE
    return Outcome.PERMANENT


@dataclass(frozen=True)
class ObjectResult:
    """The answer for one object of a batch."""

    path: Path
    sop_instance_uid: str
    status: int | None  # None: not answered (timeout, abort) or not sent
    outcome: Outcome
    detail: str = ""


@dataclass
class SendResult:
    """What happened to one batch."""

    outcome: Outcome
    reason: str  # empty on success
    objects: list[ObjectResult] = field(default_factory=list)
    associations: int = 0  # associations established (0 or 1)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return sum(1 for o in self.objects if o.outcome is Outcome.SUCCESS)


@dataclass(frozen=True)
class Peer:
    """Where a batch goes."""

    title: str
    host: str
    port: int
    tls: bool = False


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    sop_class_uid: UID
    sop_instance_uid: str
    transfer_syntax_uid: UID


def _read_info(path: Path) -> _FileInfo:
    """The file meta only: pydicom reads a deflated data set by inflating all of it, even
    without its pixels."""
    meta = read_file_meta_info(path)
    return _FileInfo(
        path, UID(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), UID(meta.TransferSyntaxUID)
    )


def _request_contexts(ae: AE, files: Sequence[_FileInfo]) -> None:
    """One context per SOP class with both little-endian syntaxes, plus one per other syntax."""
    seen: set[tuple[str, str]] = set()
    for info in files:
        key = (info.sop_class_uid, "uncompressed")
        if key not in seen:
            seen.add(key)
            ae.add_requested_context(info.sop_class_uid, list(UNCOMPRESSED))
        if info.transfer_syntax_uid not in UNCOMPRESSED:
            key = (info.sop_class_uid, info.transfer_syntax_uid)
            if key not in seen:
                seen.add(key)
                ae.add_requested_context(info.sop_class_uid, [info.transfer_syntax_uid])


def _accepted(assoc: Any, info: _FileInfo) -> set[str]:
    """The transfer syntaxes the peer accepted for the file's SOP class."""
    return {
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == info.sop_class_uid and cx.transfer_syntax
    }


@contextlib.contextmanager
def _sendable(info: _FileInfo, syntaxes: set[str]) -> Iterator[Path | pydicom.Dataset]:
    """What to give pynetdicom for one file, given the transfer syntaxes the peer accepted for its
    SOP class. A file path is sent as it is stored, in chunks of the peer's PDU size, never decoded
    (pynetdicom's STORE_SEND_CHUNKED_DATASET, set below): only when the peer took the file's own
    syntax. A deflated file to a peer that took Explicit VR Little Endian is inflated, a chunk at a
    time, into a temporary file beside it and sent from there: a deflated Parametric Map of a
    1,000-slice series is 1 GB inflated, and read whole it cost the worker 2 GB or more. Any other
    case (a compressed file to a peer that takes only uncompressed syntaxes, or the other
    uncompressed syntax) is read into memory and converted by pynetdicom: small objects."""
    if info.transfer_syntax_uid in syntaxes:
        yield info.path
        return
    if info.transfer_syntax_uid == DeflatedExplicitVRLittleEndian and ExplicitVRLittleEndian in syntaxes:
        inflated = info.path.with_name(f".{info.path.name}.inflated")
        try:
            _inflate_file(info.path, inflated)
            yield inflated
        finally:
            inflated.unlink(missing_ok=True)
        return
    ds = pydicom.dcmread(info.path)  # a deflated file is inflated as it is read
    if info.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    elif info.transfer_syntax_uid not in UNCOMPRESSED:
        ds.decompress()
    yield ds


_INFLATE_CHUNK = 1 << 20  # compressed bytes read at a time
_INFLATE_OUT = 4 << 20  # the most inflated bytes held at a time (a map of zeros inflates 1,000-fold)


def _inflate_file(source: Path, target: Path) -> None:
    """Write ``source`` (Deflated Explicit VR Little Endian) to ``target`` as Explicit VR Little
    Endian: the same file meta with the transfer syntax changed, then the data set inflated in
    bounded pieces (raw deflate, PS3.5 A.5)."""
    stored, offset = split_dataset(source)
    meta = FileMetaDataset(stored)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.write(b"\x00" * 128 + b"DICM")
        out = DicomFileLike(dst)
        out.is_little_endian, out.is_implicit_VR = True, False
        write_file_meta_info(out, meta, enforce_standard=True)
        src.seek(offset)
        while chunk := src.read(_INFLATE_CHUNK):
            data = inflater.decompress(chunk, _INFLATE_OUT)
            dst.write(data)
            while inflater.unconsumed_tail:
                dst.write(inflater.decompress(inflater.unconsumed_tail, _INFLATE_OUT))
        dst.write(inflater.flush())


class Negotiation:
    """What the association request met, from pynetdicom's events: a TCP connection, an answer,
    and that answer's result (accepted, or rejected with its result, source and reason)."""

    def __init__(self) -> None:
        self.connected = False
        self.connected_at = 0.0  # time.monotonic() of the TCP connection
        self.answered = False
        self.accepted = False
        self.rejected: int | None = None  # AssociateResult.REJECTED_PERMANENT or _TRANSIENT
        self.rejection = "no detail"

    def handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_ACSE_RECV, self._on_acse_recv), (evt.EVT_CONN_OPEN, self._on_conn_open)]

    def _on_conn_open(self, _event: Any) -> None:
        self.connected = True
        self.connected_at = time.monotonic()

    def dropped(self, timeout: float) -> bool:
        """The peer took the connection and closed it well within the timeout, without an answer."""
        return self.connected and not self.answered and time.monotonic() - self.connected_at < timeout / 2

    def _on_acse_recv(self, event: Any) -> None:
        primitive = event.primitive
        if isinstance(primitive, A_P_ABORT):
            return  # the local provider's abort (the connection closed or timed out): no answer
        self.answered = True
        result = getattr(primitive, "result", None)
        if result in (AssociateResult.REJECTED_PERMANENT, AssociateResult.REJECTED_TRANSIENT):
            self.rejected = result
            self.rejection = f"{primitive.result_str}, source: {primitive.source_str}, reason: {primitive.reason_str}"
        elif result == AssociateResult.ACCEPTED:
            self.accepted = True

    def was_rejected(self, assoc: Any) -> bool:
        """An A-ASSOCIATE-RJ came back. Also when pynetdicom reports the association aborted: a
        peer that closes its end right after the rejection can have the close seen first."""
        return bool(assoc.is_rejected) or self.rejected is not None

    def no_association(self, where: str, timeout: float) -> str:
        """Why an association that was neither rejected nor accepted did not come about."""
        if not self.connected:
            return f"no association with {where}: no TCP connection (refused or timed out)"
        if self.dropped(timeout):
            return f"no association with {where}: the connection was closed before an answer to the association request"
        if not self.answered:
            return f"no association with {where}: no answer to the association request within {timeout:g} s"
        return f"no association with {where}: aborted during negotiation"

    def why_not(self, assoc: Any, files: Sequence[_FileInfo], where: str, timeout: float) -> tuple[Outcome, str]:
        """The outcome and reason of an association that was not established."""
        if self.was_rejected(assoc):
            outcome = Outcome.RETRIABLE if self.rejected == AssociateResult.REJECTED_TRANSIENT else Outcome.PERMANENT
            return outcome, f"association rejected by {where}: {self.rejection}"
        if self.accepted:
            classes = sorted({f.sop_class_uid.name for f in files})
            return Outcome.PERMANENT, f"{where} accepted none of the presentation contexts ({', '.join(classes)})"
        return Outcome.RETRIABLE, self.no_association(where, timeout)


def associate(ae: AE, host: str, port: int, title: str, tls_args: Any, timeout: float) -> tuple[Any, Negotiation]:
    """Request an association of ``ae`` with ``title@host:port``; the association and what the
    request met. A peer that took the connection and dropped it at once, without an answer, is asked
    once more: a connection reset in passing, or a rejection whose A-ASSOCIATE-RJ was lost to the
    peer's reset of the connection. Silence until the timeout is not asked again (a second wait)."""
    for attempt in (1, 2):
        negotiation = Negotiation()
        assoc = ae.associate(host, port, ae_title=title, tls_args=tls_args, evt_handlers=negotiation.handlers())
        if assoc.is_established or negotiation.was_rejected(assoc) or not negotiation.dropped(timeout):
            break
        if attempt == 1:
            log.info(
                "association with %s@%s:%d: the connection was closed without an answer; asking once more",
                title,
                host,
                port,
            )
    return assoc, negotiation


def _store_one(assoc: Any, info: _FileInfo, syntaxes: set[str]) -> ObjectResult:
    """C-STORE one file on an established association (``syntaxes``: those the peer accepted for
    its SOP class) and classify the answer."""
    with _sendable(info, syntaxes) as what:
        rsp = assoc.send_c_store(what)
    code = int(rsp.Status) if "Status" in rsp else None
    outcome = classify_status(code)
    if outcome is Outcome.SUCCESS:
        return ObjectResult(info.path, info.sop_instance_uid, code, outcome)
    detail = f"{info.sop_class_uid.name} {info.sop_instance_uid}: {status_name(code)}"
    if code is not None and "ErrorComment" in rsp:
        detail += f" ({rsp.ErrorComment})"
    return ObjectResult(info.path, info.sop_instance_uid, code, outcome, detail)


def _not_sent(files: Sequence[_FileInfo]) -> list[ObjectResult]:
    return [ObjectResult(f.path, f.sop_instance_uid, None, Outcome.RETRIABLE, "not sent") for f in files]


def _store_all(
    assoc: Any, files: Sequence[_FileInfo], where: str, on_progress: Callable[[int], None] | None
) -> list[ObjectResult]:
    """Every file in turn; after a lost association (no answer, abort) the rest is not sent."""
    results: list[ObjectResult] = []
    for i, info in enumerate(files):
        syntaxes = _accepted(assoc, info)
        if info.transfer_syntax_uid not in syntaxes and not syntaxes & set(UNCOMPRESSED):
            detail = f"{where} accepted no presentation context for {info.sop_class_uid.name}"
            results.append(ObjectResult(info.path, info.sop_instance_uid, None, Outcome.PERMANENT, detail))
            continue
        result = _store_one(assoc, info, syntaxes)
        results.append(result)
        if result.outcome is Outcome.SUCCESS and on_progress is not None:
            on_progress(sum(1 for r in results if r.outcome is Outcome.SUCCESS))
        if result.status is None or not assoc.is_established:
            # The association is gone (timeout, abort): the rest waits for the next attempt.
            results.extend(_not_sent(files[i + 1 :]))
            break
    return results


def _batch_reason(results: Sequence[ObjectResult], where: str) -> str:
    """What went wrong in a batch: how many objects were stored, and the first failures."""
    failures = [r.detail for r in results if r.outcome is not Outcome.SUCCESS and r.detail != "not sent"]
    sent = sum(1 for r in results if r.outcome is Outcome.SUCCESS)
    reason = f"{sent} of {len(results)} objects stored by {where}; " + "; ".join(failures[:5])
    if len(failures) > 5:
        reason += f"; and {len(failures) - 5} more"
    return reason


def send_files(
    paths: Sequence[Path],
    peer: Peer,
    *,
    calling_ae_title: str,
    timeout: float = 30.0,
    max_pdu: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> SendResult:
    """Send ``paths`` (DICOM Part 10 files) to ``peer`` over one association and classify the
    outcome. Never raises for a network or DICOM failure: those are in the result.
    ``on_progress(stored so far)`` is called after every object the peer stored."""
    started = time.monotonic()
    files = [_read_info(Path(p)) for p in paths]
    if not files:
        return SendResult(Outcome.SUCCESS, "", seconds=0.0)
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.maximum_pdu_size = max_pdu
    _request_contexts(ae, files)
    tls_args = (ssl.create_default_context(ssl.Purpose.SERVER_AUTH), peer.host) if peer.tls else None
    where = f"{peer.title}@{peer.host}:{peer.port}"
    assoc, negotiation = associate(ae, peer.host, peer.port, peer.title, tls_args, timeout)
    if not assoc.is_established:
        outcome, reason = negotiation.why_not(assoc, files, where, timeout)
        log.warning("export to %s: %s", where, reason)
        return SendResult(outcome, reason, _not_sent(files), 0, time.monotonic() - started)
    try:
        results = _store_all(assoc, files, where, on_progress)
    finally:
        if assoc.is_established:
            assoc.release()
    outcome = worst([r.outcome for r in results])
    reason = "" if outcome is Outcome.SUCCESS else _batch_reason(results, where)
    if reason:
        log.warning("export to %s: %s", where, reason)
    return SendResult(outcome, reason, results, 1, time.monotonic() - started)
