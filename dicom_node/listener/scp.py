"""Receiving (Storage SCP): the C-ECHO and C-STORE handlers of one local AE.

Knows nothing of Celery. A C-STORE is answered with success only after the instance is durably on
disk (dicom_node.storage.files) and indexed (dicom_node.storage.index); anything else gets a named failure
status (dicom_node.dicom_answers) and a log line that says why. The data set is stored exactly as
received; it is parsed only to check it.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable

from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UID_dictionary,
)
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType

from dicom_node.dicom_answers import AssociateResult, PresentationRejectReason, RejectReason, RejectSource, Status
from dicom_node.errors import NodeError
from dicom_node.listener import header as fast_header
from dicom_node.storage.files import Storage
from dicom_node.storage.index import Index, LocalAESnapshot
from dicom_node.storage.instance import Header, InvalidHeader, header_of, make_header
from model.contract.uids import check_received_uid

log = logging.getLogger(__name__)

DEFAULT_SOP_CLASSES: tuple[str, ...] = (CTImageStorage, EnhancedCTImageStorage)

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    ExplicitVRBigEndian,
)

# "*" in a SOP class list: every storage SOP class of the standard, retired ones included.
ALL_STORAGE = "*"
_ALL_STORAGE_CLASSES: tuple[str, ...] = tuple(
    uid
    for uid, (name, kind, *_rest) in UID_dictionary.items()
    if kind == "SOP Class" and "Storage" in name and "Commitment" not in name and "Directory" not in name
)
_IMAGE_WORDS = ("Image Storage", "Multi-frame", "Photograph", "Volume Storage")


def accepted_sop_classes(extra: tuple[str, ...] | list[str]) -> list[str]:
    """CT and Enhanced CT, plus the configured extras ("*" = all storage classes)."""
    out = list(DEFAULT_SOP_CLASSES)
    for uid in extra:
        if uid == ALL_STORAGE:
            out.extend(_ALL_STORAGE_CLASSES)
        else:
            out.append(uid)
    return list(dict.fromkeys(out))  # without repeats, in order


def requires_pixel_data(sop_class_uid: str) -> bool:
    name = UID(sop_class_uid).name
    return any(word in name for word in _IMAGE_WORDS) and "Presentation State" not in name


class RejectedInstance(NodeError):
    """An instance we refuse; carries the status to answer and the reason to log."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_header(raw: bytes, transfer_syntax: str, *, command_sop_class: str, command_sop_instance: str) -> Header:
    """Read what the node keeps of a received data set, check that the data set is whole (a
    truncated one fails here) and matches its request. Raises RejectedInstance with the status
    to answer."""
    ts = UID(transfer_syntax)
    data = raw
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(raw, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"deflated data set does not inflate: {exc}") from None
    if len(data) == 0:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, "data set is empty")
    header, has_pixels = _read_header(data, ts)
    if header.sop_instance_uid != command_sop_instance.rstrip("\x00").strip():
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND,
            f"SOPInstanceUID {header.sop_instance_uid} differs from the request's {command_sop_instance}",
        )
    if header.sop_class_uid != command_sop_class.rstrip("\x00").strip():
        raise RejectedInstance(
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOPClassUID {header.sop_class_uid} differs from the request's {command_sop_class}",
        )
    if requires_pixel_data(header.sop_class_uid) and not has_pixels:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, "image has no pixel data")
    return header


@dataclass(frozen=True)
class PixelGeometry:
    """What the length of a native Pixel Data must be (PS3.5 8.1.1, PS3.3 C.7.6.3)."""

    rows: int | None
    columns: int | None
    samples: int | None
    bits_allocated: int | None
    frames: int
    pixel_length: int | None  # None: no native Pixel Data (encapsulated, float, or none)

    def check(self) -> None:
        """Raise RejectedInstance when the Pixel Data is shorter than its image needs: such an
        instance can not be decoded, and one of them makes a whole series' analysis fail."""
        if self.pixel_length is None:
            return
        missing = [
            name
            for name, v in (("Rows", self.rows), ("Columns", self.columns), ("BitsAllocated", self.bits_allocated))
            if not v
        ]
        if missing:
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND, f"Pixel Data without {', '.join(missing)}: the image can not be decoded"
            )
        assert self.rows and self.columns and self.bits_allocated
        samples = self.samples or 1
        bits = self.rows * self.columns * samples * self.frames * self.bits_allocated
        expected = (bits + 7) // 8
        if self.pixel_length < expected:
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND,
                f"Pixel Data has {self.pixel_length} bytes; "
                "Rows x Columns x SamplesPerPixel x BitsAllocated/8 x Frames "
                f"({self.rows} x {self.columns} x {samples} x {self.bits_allocated}/8 x {self.frames}) need {expected}",
            )


def _read_header(data: bytes, ts: UID) -> tuple[Header, bool]:
    """(header, has pixel data): the fast reader for little endian data, pydicom otherwise. A
    native Pixel Data shorter than its image needs is refused here."""
    if ts.is_little_endian:
        try:
            values, has_pixels = fast_header.scan(data, implicit=ts.is_implicit_VR)
        except fast_header.Truncated as exc:
            raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"data set is truncated: {exc}") from None
        except fast_header.Unsupported as exc:
            log.debug("fast header reader: %s; reading with pydicom", exc)
        else:
            encodings = _encodings(fast_header.text(values.get("SpecificCharacterSet")))
            try:
                header = make_header(lambda k: fast_header.text(values.get(k), encodings))
            except InvalidHeader as exc:
                raise RejectedInstance(Status.CANNOT_UNDERSTAND, str(exc)) from None
            PixelGeometry(
                rows=fast_header.unsigned_short(values.get("Rows")),
                columns=fast_header.unsigned_short(values.get("Columns")),
                samples=fast_header.unsigned_short(values.get("SamplesPerPixel")),
                bits_allocated=fast_header.unsigned_short(values.get("BitsAllocated")),
                frames=header.frames,
                pixel_length=fast_header.unsigned_long(values.get(fast_header.PIXEL_DATA_LENGTH))
                if not ts.is_compressed
                else None,
            ).check()
            return header, has_pixels
    try:
        ds = read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
    except (EOFError, ValueError, NotImplementedError, OSError, KeyError, IndexError, TypeError) as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {type(exc).__name__}: {exc}"
        ) from None
    if len(ds) == 0:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, "data set is empty")
    _check_complete(ds, len(data))
    try:
        header = header_of(ds)
        PixelGeometry(
            rows=_us(ds, "Rows"),
            columns=_us(ds, "Columns"),
            samples=_us(ds, "SamplesPerPixel"),
            bits_allocated=_us(ds, "BitsAllocated"),
            frames=header.frames,
            pixel_length=None if ts.is_compressed else _native_pixel_length(ds),
        ).check()
        return header, any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except InvalidHeader as exc:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, str(exc)) from None
    except (ValueError, TypeError, KeyError, EOFError, OverflowError) as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, f"data set has an unreadable attribute: {type(exc).__name__}: {exc}"
        ) from None


def _us(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value[0])
    except (TypeError, IndexError, ValueError):
        return None


def _native_pixel_length(ds: Dataset) -> int | None:
    """The length of a defined-length Pixel Data as received; None if there is none."""
    if 0x7FE00010 not in ds:
        return None
    elem = ds.get_item(0x7FE00010)
    if isinstance(elem, RawDataElement):
        return None if elem.length == 0xFFFFFFFF else int(elem.length)
    value = elem.value
    return len(value) if isinstance(value, (bytes, bytearray)) else None


def _encodings(specific_character_set: str) -> list[str]:
    if not specific_character_set:
        return ["iso8859"]
    try:
        return list(convert_encodings([v.strip() for v in specific_character_set.split("\\")]))
    except LookupError:
        return ["iso8859"]


def _check_complete(ds: Dataset, size: int) -> None:
    """pydicom reads a value cut short by the end of the data without complaint: check that every
    top-level element got all its bytes and that nothing is missing after the last one."""
    end = 0
    for tag in ds.keys():
        elem = ds.get_item(tag)  # the element as read, not converted
        if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
            continue
        got = len(elem.value) if elem.value is not None else 0
        if got != elem.length:
            raise RejectedInstance(
                Status.CANNOT_UNDERSTAND,
                f"data set is truncated: element {elem.tag} has {got} of its {elem.length} bytes",
            )
        end = max(end, elem.value_tell + elem.length)
    if end > size:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"data set is truncated at byte {size}")


class Receiver:
    """The C-STORE logic of the node, independent of the network: check, store durably, index."""

    def __init__(self, storage: Storage, index: Index, *, min_free_bytes: int) -> None:
        self.storage = storage
        self.index = index
        self.min_free_bytes = min_free_bytes

    def store(
        self,
        local_ae: LocalAESnapshot,
        *,
        calling_ae: str,
        calling_host: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: bytes,
    ) -> tuple[Status, str]:
        """Store one instance; return the status to answer and, for a failure, why."""
        try:
            return self._store(
                local_ae, calling_ae, calling_host, sop_class_uid, sop_instance_uid, transfer_syntax_uid, dataset
            ), ""
        except RejectedInstance as exc:
            log.warning(
                "C-STORE refused (0x%04X %s): %s; SOP instance %s from %s@%s to %s",
                exc.status.value,
                exc.status.name,
                exc.reason,
                str(sop_instance_uid)[:80],
                calling_ae,
                calling_host,
                local_ae.title,
            )
            self.index.event(
                "store",
                f"refused {str(sop_instance_uid)[:80]} with 0x{exc.status.value:04X}: {exc.reason}",
                level="warning",
                calling_ae=calling_ae,
                calling_host=calling_host,
                local_ae=local_ae.title,
            )
            return exc.status, exc.reason

    def _store(
        self,
        local_ae: LocalAESnapshot,
        calling_ae: str,
        calling_host: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: bytes,
    ) -> Status:
        if self.storage.free_bytes() < self.min_free_bytes + len(dataset):
            raise RejectedInstance(
                Status.OUT_OF_RESOURCES,
                f"free disk space below the watermark of {self.min_free_bytes // (1024 * 1024)} MB",
            )
        ok, reason = check_received_uid(sop_instance_uid)
        if not ok:
            raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"request's AffectedSOPInstanceUID: {reason}")
        header = parse_header(
            dataset, transfer_syntax_uid, command_sop_class=sop_class_uid, command_sop_instance=sop_instance_uid
        )
        relative = self.storage.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
        # The layout is a function of the UIDs, so an existing file is the cheap duplicate check;
        # the index decides (a crash between rename and index leaves a file to index now).
        if self.storage.exists(relative) and self.index.has_instance(header.sop_instance_uid):
            log.info("instance %s received again: already stored, answering success", header.sop_instance_uid)
            return Status.SUCCESS
        try:
            stored = self.storage.write(
                relative,
                dataset,
                sop_class_uid=header.sop_class_uid,
                sop_instance_uid=header.sop_instance_uid,
                transfer_syntax_uid=transfer_syntax_uid,
                source_ae_title=calling_ae,
                series_record={
                    "local_ae_id": local_ae.id,
                    "local_ae": local_ae.title,
                    "calling_ae": calling_ae,
                    "calling_host": calling_host,
                },
            )
        except OSError as exc:
            raise RejectedInstance(Status.OUT_OF_RESOURCES, f"cannot write the instance: {exc}") from None
        self.index.record(
            header.received(
                local_ae_id=local_ae.id,
                calling_ae=calling_ae,
                calling_host=calling_host,
                transfer_syntax_uid=str(transfer_syntax_uid),
                path=stored.relative,
                size_bytes=stored.size,
            )
        )
        return Status.SUCCESS


_CONTEXT_RESULTS = {
    0x01: "user rejection",
    0x02: "no reason",
    0x03: "abstract syntax (SOP class) not supported",
    0x04: "no transfer syntax supported",
}


def handlers_for(
    local_ae: LocalAESnapshot, receiver: Receiver, *, max_associations: int = 64
) -> list[EventHandlerType]:
    """pynetdicom event handlers binding one local AE to the receiver. ``max_associations``:
    negotiated associations of this local AE in this process (connections still negotiating do
    not count: they cannot lock senders out)."""

    def on_requested(event: evt.Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        assert request is not None  # the A-ASSOCIATE-RQ being answered
        calling_ae = str(request.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        established = sum(1 for a in assoc.ae.active_associations if a.is_acceptor and a.is_established)
        if established >= max_associations:
            reason = f"{established} associations already open (listener.max_associations); rejected as transient"
            log.warning("association refused: %s@%s to %s: %s", calling_ae, host, local_ae.title, reason)
            receiver.index.event(
                "association",
                f"refused: {reason}",
                level="warning",
                calling_ae=calling_ae,
                calling_host=host,
                local_ae=local_ae.title,
            )
            assoc.acse.send_reject(
                AssociateResult.REJECTED_TRANSIENT,
                RejectSource.SERVICE_PROVIDER_PRESENTATION,
                PresentationRejectReason.LOCAL_LIMIT_EXCEEDED,
            )
            assoc.kill()
            return
        ok, reason = receiver.index.check_source(local_ae, calling_ae, host)
        if not ok:
            log.warning("association refused: %s@%s to %s: %s", calling_ae, host, local_ae.title, reason)
            receiver.index.event(
                "association",
                f"refused: {reason}",
                level="warning",
                calling_ae=calling_ae,
                calling_host=host,
                local_ae=local_ae.title,
            )
            assoc.acse.send_reject(
                AssociateResult.REJECTED_PERMANENT,
                RejectSource.SERVICE_USER,
                RejectReason.CALLING_AE_TITLE_NOT_RECOGNISED,
            )
            # As pynetdicom's own rejections do: wait until the A-ASSOCIATE-RJ is on the wire
            # and the peer has closed, before the server shuts the socket down.
            assoc.kill()
        else:
            log.info("association from %s@%s to %s accepted", calling_ae, host, local_ae.title)

    def on_accepted(event: evt.Event) -> None:
        assoc = event.assoc
        rejected = assoc.rejected_contexts
        if not rejected:
            return
        calling_ae = str(assoc.requestor.ae_title).strip()
        host = str(assoc.requestor.address)
        # One entry per SOP class and reason (a sender proposes each class once per transfer syntax).
        reasons = list(
            dict.fromkeys(
                f"{_sop_class_name(str(cx.abstract_syntax))}: "
                f"{_CONTEXT_RESULTS.get(int(cx.result or 0), f'result {cx.result}')}"
                for cx in rejected
            )
        )
        what = "; ".join(reasons[:8]) + (f"; and {len(reasons) - 8} more" if len(reasons) > 8 else "")
        accepted = len(assoc.accepted_contexts)
        # Senders often propose every storage class they know (storescu does): then the rejected
        # ones are a detail (DEBUG); a warning and an event when nothing this AE takes was accepted.
        level = logging.WARNING if accepted == 0 else logging.DEBUG
        log.log(
            level,
            "association from %s@%s to %s: %d presentation context(s) rejected (%d accepted): %s",
            calling_ae,
            host,
            local_ae.title,
            len(rejected),
            accepted,
            what,
        )
        if accepted == 0:
            receiver.index.event(
                "association",
                f"every presentation context rejected ({len(rejected)}): {what}"[:1000],
                level="warning",
                calling_ae=calling_ae,
                calling_host=host,
                local_ae=local_ae.title,
            )

    def on_echo(event: evt.Event) -> int:
        return int(Status.SUCCESS)

    def on_store(event: evt.Event) -> Dataset:
        # Messages the fast lane (dicom_node.listener.fastlane) did not take come here.
        request = event.request
        assert isinstance(request, C_STORE) and request.DataSet is not None  # EVT_C_STORE
        status, reason = receiver.store(
            local_ae,
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            calling_host=str(event.assoc.requestor.address),
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            dataset=request.DataSet.getvalue(),
        )
        return status_dataset(status, reason)

    return [
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_ACCEPTED, on_accepted),
        (evt.EVT_C_ECHO, on_echo),
        (evt.EVT_C_STORE, on_store),
    ]


def _sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def status_dataset(status: Status, reason: str) -> Dataset:
    """A C-STORE-RSP status with an Error Comment saying why (PS3.7 C.4)."""
    ds = Dataset()
    ds.Status = int(status)
    if reason and not status.is_success:
        ds.ErrorComment = reason[:64]
    return ds


def fast_store_handler(local_ae: LocalAESnapshot, receiver: Receiver) -> Callable[..., tuple[int, str]]:
    """The store handler of the fast lane (dicom_node.listener.fastlane) for one local AE."""

    def store(
        assoc: Any, *, context_id: int, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str, dataset: bytes
    ) -> tuple[int, str]:
        status, reason = receiver.store(
            local_ae,
            calling_ae=str(assoc.requestor.ae_title).strip(),
            calling_host=str(assoc.requestor.address),
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax,
            dataset=dataset,
        )
        return int(status), reason

    return store
