"""What a received data set must be before it is stored: read the header the node keeps, check
that the data set is whole and matches its request, and that a native Pixel Data holds its image.

The data set comes as a :class:`~dicom_node.storage.spool.Spool` (in memory, or a temporary file
for a large one) or as bytes. It is read front to back by the fast header reader
(dicom_node.listener.header), a deflated one inflated a chunk at a time, so that any size costs
bounded memory; pydicom reads what the fast reader does not handle (big endian, oddities).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO, Callable, Iterator

from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicom_node.dicom_answers import Status
from dicom_node.errors import NodeError
from dicom_node.listener import header as fast_header
from dicom_node.settings import ListenerSettings
from dicom_node.storage.instance import Header, InvalidHeader, header_of, make_header
from dicom_node.storage.spool import MEMORY_BYTES, Spool

log = logging.getLogger(__name__)

_IMAGE_WORDS = ("Image Storage", "Multi-frame", "Photograph", "Volume Storage")
# pydicom reads a data set the fast reader can not walk only up to this size (a data set that
# stayed in memory; a deflated one inflated in memory): a large one is refused instead, as pydicom
# would take minutes and much memory over one built to make it.
FALLBACK_BYTES = MEMORY_BYTES
# Values longer than this are skipped by pydicom, not read.
_DEFER_BYTES = 64 * 1024
# Largest data set accepted when nothing else is said: listener.max_dataset_bytes' default.
DEFAULT_MAX_BYTES: int = ListenerSettings.model_fields["max_dataset_bytes"].default


def requires_pixel_data(sop_class_uid: str) -> bool:
    name = UID(sop_class_uid).name
    return any(word in name for word in _IMAGE_WORDS) and "Presentation State" not in name


class RejectedInstance(NodeError):
    """An instance we refuse; carries the status to answer and the reason to log."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# (a file object at the start of the data set, where the data set ends in it) for pydicom; raises
# RejectedInstance for a data set too large for pydicom.
Reopen = Callable[[], tuple[BinaryIO, int]]


def parse_header(
    raw: bytes | Spool,
    transfer_syntax: str,
    *,
    command_sop_class: str,
    command_sop_instance: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Header:
    """Read what the node keeps of a received data set, check that the data set is whole (a
    truncated one fails here) and matches its request. ``max_bytes``: what a deflated data set
    may inflate to. Raises RejectedInstance with the status to answer."""
    ts = UID(transfer_syntax)
    spool = raw if isinstance(raw, Spool) else Spool.of_bytes(raw)
    with _reader(spool) as (reader, reopen):
        if ts == DeflatedExplicitVRLittleEndian:
            reader = fast_header.InflateReader(reader, max_bytes)
            reopen = _inflated(spool)
        try:
            if reader.at_end():
                raise RejectedInstance(Status.CANNOT_UNDERSTAND, "data set is empty")
            header, has_pixels = _read_header(reader, ts, reopen)
        except fast_header.TooLarge as exc:
            raise RejectedInstance(Status.OUT_OF_RESOURCES, f"{exc} (listener.max_dataset_bytes)") from None
        except fast_header.Malformed as exc:  # from inflating
            raise RejectedInstance(Status.CANNOT_UNDERSTAND, str(exc)) from None
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


@contextlib.contextmanager
def _reader(spool: Spool) -> Iterator[tuple[fast_header.Reader, Reopen]]:
    """A reader of the data set as received, and how pydicom reopens it."""
    if spool.in_memory:
        data = spool.memory()
        yield fast_header.MemoryReader(data), lambda: (BytesIO(data), len(data))
        return
    fd, offset = spool.open_data()
    try:
        yield fast_header.FileReader(fd, offset, spool.size), _too_large_for_pydicom
    finally:
        os.close(fd)


def _too_large_for_pydicom() -> tuple[BinaryIO, int]:
    raise RejectedInstance(
        Status.CANNOT_UNDERSTAND, f"data set of more than {FALLBACK_BYTES} bytes that the node's reader can not walk"
    )


def _inflated(spool: Spool) -> Reopen:
    def reopen() -> tuple[BinaryIO, int]:
        with _reader(spool) as (raw, _):
            inflater = fast_header.InflateReader(raw, FALLBACK_BYTES)
            try:
                data = bytes(inflater.take(FALLBACK_BYTES + 1))
            except fast_header.TooLarge:
                _too_large_for_pydicom()
        return BytesIO(data), len(data)

    return reopen


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


def _read_header(data: bytes | fast_header.Reader, ts: UID, reopen: Reopen | None = None) -> tuple[Header, bool]:
    """(header, has pixel data) of a data set (inflated already, if it was deflated): the fast
    reader, and pydicom (from ``reopen``) for a small one the fast reader can not walk. A native
    Pixel Data shorter than its image needs is refused here."""
    if not isinstance(data, fast_header.Reader):
        whole = data
        data = fast_header.MemoryReader(whole)
        reopen = reopen or (lambda: (BytesIO(whole), len(whole)))
    assert reopen is not None
    try:
        values, has_pixels = fast_header.scan(data, implicit=ts.is_implicit_VR, little_endian=ts.is_little_endian)
    except fast_header.Truncated as exc:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"data set is truncated: {exc}") from None
    except fast_header.Malformed as exc:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, str(exc)) from None
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
    fp, size = reopen()
    try:
        ds = read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian, defer_size=_DEFER_BYTES)
    except (EOFError, ValueError, NotImplementedError, OSError, KeyError, IndexError, TypeError) as exc:
        raise RejectedInstance(
            Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {type(exc).__name__}: {exc}"
        ) from None
    if len(ds) == 0:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, "data set is empty")
    _check_complete(ds, size)
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
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
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
    top-level element got all its bytes and that nothing is missing after the last one (a value
    pydicom skipped, over _DEFER_BYTES, is checked by where it ends)."""
    end = 0
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)  # the element as read, not converted or read later
        if not isinstance(elem, RawDataElement) or elem.length == 0xFFFFFFFF:
            continue
        if elem.value is not None or elem.length <= _DEFER_BYTES:
            got = len(elem.value) if elem.value is not None else 0
            if got != elem.length:
                raise RejectedInstance(
                    Status.CANNOT_UNDERSTAND,
                    f"data set is truncated: element {elem.tag} has {got} of its {elem.length} bytes",
                )
        end = max(end, elem.value_tell + elem.length)
    if end > size:
        raise RejectedInstance(Status.CANNOT_UNDERSTAND, f"data set is truncated at byte {size}")
