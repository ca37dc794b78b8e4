"""STOW-RS input (PS3.18 10.5, Store Instances): a ``multipart/related; type="application/dicom"``
request read as it arrives, each part a DICOM Part 10 file, stored by the node's receiver
(dicom_node.listener.scp.Receiver) exactly as a C-STORE is: the same checks, the one storage
layout, the index, then series completion and the analysis job as for any received instance.

Memory stays bounded whatever the request's size: the body is fed in the chunks the server reads;
a part's File Meta Information (at most :data:`META_MAX_BYTES`) is kept until it is whole, then the
data set after it goes to the receiver's spool (dicom_node.storage.spool: memory up to 2 MiB, then a
temporary file in the storage's ``.incoming/`` that storing renames into place). A data set over
``listener.max_dataset_bytes`` is dropped as it arrives (failure 0xA700), a request over
``dicomweb.max_request_bytes`` is refused (HTTP 413) and the part being read discarded: nothing of
a refused instance is left on disk. Instances stored before a refusal stay stored (each one whole;
sending them again is answered success without storing twice).

A part is refused, with its failure reason (PS3.18 Table 10.5.3-3, the DIMSE status values) in the
response's Failed SOP Sequence, when it is not a Part 10 file (0xC000), its SOP class is not one the
local AE accepts by C-STORE (0x0122; CT, Enhanced CT and the AE's extra SOP classes) or its transfer
syntax not one the listener accepts (0xC122), and for every reason the receiver refuses a C-STORE
(0xA700, 0xA900, 0xC000).
"""

from __future__ import annotations

import email.message
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from dicom_node.dicom_answers import Status
from dicom_node.errors import NodeError
from dicom_node.listener.dataset import RejectedInstance
from dicom_node.listener.scp import TRANSFER_SYNTAXES, Receiver
from dicom_node.storage.index import LocalAESnapshot
from dicom_node.storage.spool import Spool
from model.contract.uids import check_received_uid

log = logging.getLogger(__name__)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
# The calling AE title recorded for instances received by STOW-RS (series lists, file meta).
STOW_CALLING_AE = "STOW-RS"
SERVICE = "STOW-RS"
# Preamble, "DICM", the group length element and the File Meta Information: at most this much of a
# part is held before its data set starts (real ones are a few hundred bytes).
META_MAX_BYTES = 64 * 1024
_HEAD = 144  # preamble (128) + "DICM" + (0002,0000) UL 4


class RequestRefused(NodeError):
    """The whole request is refused with an HTTP status (400, 406, 413, 415): ``status``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Outcome:
    """What became of one part: ``status`` 0 stored, else its failure reason."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.status == 0


def boundary_of(content_type: str) -> bytes:
    """The boundary of a STOW-RS request's Content-Type; RequestRefused 415 for another media type
    (only Part 10 instances are taken: no metadata and bulk data parts), 400 without a boundary."""
    msg = email.message.Message()
    msg["content-type"] = content_type or "text/plain"
    if msg.get_content_type() != "multipart/related":
        raise RequestRefused(415, f'a STOW-RS request is multipart/related; type="{DICOM}", not {content_type!r}')
    kind = msg.get_param("type")
    if kind is not None and str(kind).lower() != DICOM:
        raise RequestRefused(415, f"only {DICOM} parts (Part 10 instances) are taken, not type={kind}")
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestRefused(400, "the multipart/related Content-Type has no boundary")
    return boundary.encode("latin-1", "replace")


def response_type(accept: str) -> str:
    """The response's media type for an Accept header: dicom+json (the default) or dicom+xml;
    RequestRefused 406 when the client takes neither."""
    if not accept.strip():
        return DICOM_JSON
    for entry in accept.split(","):
        media = entry.split(";")[0].strip().lower()
        if media in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return DICOM_JSON
        if media in (DICOM_XML, "application/xml"):
            return DICOM_XML
    raise RequestRefused(406, f"the STOW-RS response is {DICOM_JSON} or {DICOM_XML}; Accept: {accept!r}")


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    head: bytearray = field(default_factory=bytearray)
    spool: Spool | None = None
    failed: tuple[Status, str] | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax_uid: str = ""


class StowReader:
    """One STOW-RS request's body, fed chunk by chunk (:meth:`feed`), then :meth:`finish`. Not
    thread safe: one request, one reader. ``accepted``: the SOP classes the local AE takes."""

    def __init__(
        self,
        receiver: Receiver,
        local_ae: LocalAESnapshot,
        accepted: frozenset[str],
        *,
        boundary: bytes,
        calling_host: str,
        max_request_bytes: int,
    ) -> None:
        self.receiver = receiver
        self.local_ae = local_ae
        self.accepted = accepted
        self.calling_host = calling_host
        self.max_request_bytes = max_request_bytes
        self.received = 0
        self.outcomes: list[Outcome] = []
        self._part: _Part | None = None
        self._field = bytearray()
        self._value = bytearray()
        self._ended = False
        callbacks: dict[str, Any] = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        self._parser = MultipartParser(boundary, cast(Any, callbacks))

    # --- the request ------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the body. RequestRefused 413 past ``max_request_bytes``, 400 for a
        malformed body; the part being read is discarded then."""
        self.received += len(chunk)
        if self.received > self.max_request_bytes:
            self.abort()
            raise RequestRefused(
                413, f"request body of more than {self.max_request_bytes} bytes (dicomweb.max_request_bytes)"
            )
        if self._ended or not chunk:
            return  # the epilogue after the closing boundary
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            self.abort()
            raise RequestRefused(400, f"the multipart body is malformed: {exc}") from None

    def finish(self) -> list[Outcome]:
        """The body is all there: the outcome of every part. RequestRefused 400 for a body that
        ends inside a part or holds none."""
        if not self._ended:
            self.abort()
            raise RequestRefused(400, "the multipart body ends before its closing boundary")
        if not self.outcomes:
            raise RequestRefused(400, "the multipart body holds no part")
        return self.outcomes

    def abort(self) -> None:
        """Discard the part being read (its spool, its temporary file)."""
        part, self._part = self._part, None
        if part is not None and part.spool is not None:
            part.spool.discard()

    # --- the parser's callbacks ---------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_end(self) -> None:
        if self._part is not None:
            name = self._field.decode("latin-1").strip().lower()
            self._part.headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        part = self._part
        if part is None:
            return
        kind = part.headers.get("content-type", "")
        if kind and kind.split(";")[0].strip().lower() != DICOM:
            part.failed = (Status.CANNOT_UNDERSTAND, f"a part of type {kind[:80]!r}, not {DICOM}")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None or part.failed is not None:
            return
        view = memoryview(data)[start:end]
        if part.spool is not None:
            part.spool.write(view)
            return
        part.head.extend(view)
        try:
            self._read_meta(part)
        except RejectedInstance as exc:
            part.failed = (exc.status, exc.reason)
            part.head = bytearray()

    def _on_part_end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        if part.failed is None and part.spool is None:
            part.failed = (Status.CANNOT_UNDERSTAND, _too_short(part.head))
        if part.failed is not None:
            if part.spool is not None:
                part.spool.discard()
            status, reason = part.failed
            self._refused(part, status, reason)
            return
        assert part.spool is not None
        status, reason = self.receiver.store(
            self.local_ae,
            calling_ae=STOW_CALLING_AE,
            calling_host=self.calling_host,
            sop_class_uid=part.sop_class_uid,
            sop_instance_uid=part.sop_instance_uid,
            transfer_syntax_uid=part.transfer_syntax_uid,
            dataset=part.spool,
            service=SERVICE,
        )
        code = 0 if status.is_success else int(status)
        self.outcomes.append(Outcome(part.sop_class_uid, part.sop_instance_uid, code, reason))

    def _on_end(self) -> None:
        self._ended = True

    # --- one part ---------------------------------------------------------------------------

    def _read_meta(self, part: _Part) -> None:
        """Once the part's File Meta Information is whole: check it, then spool the data set after
        it. Raises RejectedInstance with the part's failure reason."""
        head = part.head
        if len(head) < _HEAD:
            return
        if head[128:132] != b"DICM":
            raise RejectedInstance(Status.CANNOT_UNDERSTAND, 'not a DICOM Part 10 file (no "DICM" at byte 128)')
        if head[132:138] != b"\x02\x00\x00\x00UL":
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND, "the File Meta Information does not start with its Group Length (0002,0000)"
            )
        end = _HEAD + int.from_bytes(head[140:144], "little")
        if end > META_MAX_BYTES:
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND, f"File Meta Information of more than {META_MAX_BYTES} bytes"
            )
        if len(head) < end:
            return
        try:
            meta = read_dataset(BytesIO(bytes(head[_HEAD:end])), is_implicit_VR=False, is_little_endian=True)
            values = {
                k: str(meta.get(k, "") or "").rstrip("\x00 ")
                for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
            }
        except Exception as exc:  # pydicom raises many kinds on a malformed group
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND, f"File Meta Information cannot be read: {type(exc).__name__}: {exc}"
            ) from None
        part.sop_class_uid = values["MediaStorageSOPClassUID"]
        part.sop_instance_uid = values["MediaStorageSOPInstanceUID"]
        part.transfer_syntax_uid = values["TransferSyntaxUID"]
        for keyword, value in values.items():
            ok, reason = check_received_uid(value) if value else (False, "is missing")
            if not ok:
                raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"File Meta Information: {keyword} {reason}")
        if part.sop_class_uid not in self.accepted:
            raise RejectedInstance(
                Status.SOP_CLASS_NOT_SUPPORTED,
                f"SOP class {_name(part.sop_class_uid)} is not accepted by {self.local_ae.title} "
                "(CT, Enhanced CT and the AE's extra SOP classes)",
            )
        if part.transfer_syntax_uid not in TRANSFER_SYNTAXES:
            raise RejectedInstance(
                Status.TRANSFER_SYNTAX_NOT_SUPPORTED,
                f"transfer syntax {_name(part.transfer_syntax_uid)} is not accepted",
            )
        spool = self.receiver.spool(
            calling_ae=STOW_CALLING_AE,
            sop_class_uid=part.sop_class_uid,
            sop_instance_uid=part.sop_instance_uid,
            transfer_syntax_uid=part.transfer_syntax_uid,
        )
        spool.write(memoryview(head)[end:])
        part.spool = spool
        part.head = bytearray()

    def _refused(self, part: _Part, status: Status, reason: str) -> None:
        self.outcomes.append(Outcome(part.sop_class_uid, part.sop_instance_uid, int(status), reason))
        self.receiver.refused(
            self.local_ae,
            RejectedInstance(status, reason),
            sop_instance_uid=part.sop_instance_uid,
            calling_ae=STOW_CALLING_AE,
            calling_host=self.calling_host,
            service=SERVICE,
        )


def _too_short(head: bytearray) -> str:
    if len(head) >= 132 and head[128:132] != b"DICM":
        return 'not a DICOM Part 10 file (no "DICM" at byte 128)'
    return f"not a DICOM Part 10 file: the part ends after {len(head)} bytes, inside its File Meta Information"


def _name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


# --- the response -------------------------------------------------------------------------------


def http_status(outcomes: list[Outcome]) -> int:
    """PS3.18 10.5.3: 200 every instance stored, 409 none, 202 some."""
    stored = sum(1 for o in outcomes if o.stored)
    if stored == len(outcomes):
        return 200
    return 409 if stored == 0 else 202


def response_dataset(outcomes: list[Outcome]) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-2): a Referenced SOP Sequence item
    per stored instance, a Failed SOP Sequence item with its Failure Reason per refused one. No
    Retrieve URL: the node offers no WADO-RS to retrieve them from."""
    ds = Dataset()
    failed = [o for o in outcomes if not o.stored]
    stored = [o for o in outcomes if o.stored]
    if failed:
        ds.FailedSOPSequence = [_item(o, failure=True) for o in failed]
    if stored:
        ds.ReferencedSOPSequence = [_item(o, failure=False) for o in stored]
    return ds


def _item(outcome: Outcome, *, failure: bool) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    if failure:
        item.FailureReason = outcome.status
    return item


def encode(ds: Dataset, media_type: str) -> bytes:
    """The response body in ``media_type`` (dicom+json: PS3.18 F.2; dicom+xml: PS3.19 Native DICOM Model)."""
    if media_type == DICOM_XML:
        root = ET.Element("NativeDicomModel", {"xmlns": "http://dicom.nema.org/PS3.19/models/NativeDICOM"})
        _xml_attributes(root, ds)
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
    return ds.to_json().encode("utf-8")


def _xml_attributes(parent: ET.Element, ds: Dataset) -> None:
    for elem in ds:
        attribute = ET.SubElement(
            parent, "DicomAttribute", {"tag": f"{elem.tag:08X}", "vr": str(elem.VR), "keyword": elem.keyword}
        )
        if elem.VR == "SQ":
            for number, item in enumerate(elem.value, 1):
                _xml_attributes(ET.SubElement(attribute, "Item", {"number": str(number)}), item)
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        for number, value in enumerate(values, 1):
            if value not in (None, ""):
                ET.SubElement(attribute, "Value", {"number": str(number)}).text = str(value)


def warnings(outcomes: list[Outcome], limit: int = 10) -> list[str]:
    """Warning header values (RFC 9111 5.5, as PS3.18 8.4 uses them) saying why instances were refused."""
    out = []
    for o in [o for o in outcomes if not o.stored][:limit]:
        text = f"{o.sop_instance_uid or '(unknown instance)'}: 0x{o.status:04X} {o.reason}"
        text = text.encode("latin-1", "replace").decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'299 dicom-node "{text[:400]}"')
    return out
