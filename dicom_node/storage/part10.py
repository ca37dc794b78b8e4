"""Writing a result object as a Part 10 file without a second copy of its pixels.

``pydicom.dcmwrite`` encodes a Deflated Explicit VR Little Endian data set into one buffer, takes
a copy of it and deflates that: for a Parametric Map of a 1,000-slice 512 x 512 series (1 GB of
float pixels) about three more copies of the pixels at once, the worker's peak. :func:`write_file`
writes the same file meta as ``dcmwrite(enforce_file_format=True)`` and the same data set, deflated
as one raw deflate stream at DEFLATE_LEVEL (pydicom uses zlib's default) and padded to even length,
while the data set's encoding streams through the compressor: the elements before the pixels are
encoded as usual, the pixel element's value goes in slices of a megabyte. Any other transfer syntax is written by
``pydicom.dcmwrite`` itself.

A writer may also leave a data set's pixels out and :func:`defer_pixels` them: the file then gets
them frame by frame from a function (the Parametric Map of the worker: its frames are computed
from the heatmap as they are written, so the map never holds a float copy of the volume); the
bytes are those of the data set with the pixels in it.
"""

from __future__ import annotations

import zlib
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import correct_ambiguous_vr_element, validate_file_meta, write_dataset, write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

# Float, double float and plain pixel data: the last elements of an image (before any trailing padding).
PIXEL_TAGS = (Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x7FE0, 0x0010))
_CHUNK = 1 << 20
_DEFERRED = "_deferred_pixels"


@dataclass(frozen=True)
class DeferredPixels:
    """A pixel element written by :func:`write_file` from ``frames()`` (``length`` bytes in all)."""

    keyword: str  # FloatPixelData, DoubleFloatPixelData or PixelData
    vr: str
    length: int
    frames: Callable[[], Iterable[bytes | bytearray | memoryview]]


def defer_pixels(ds: Dataset, pixels: DeferredPixels) -> None:
    """Leave ``ds``'s pixels to :func:`write_file` (``ds`` must not carry pixel data itself)."""
    if any(t in ds for t in PIXEL_TAGS):
        raise ValueError("the data set already has pixel data")
    if pixels.length % 2:
        raise ValueError("deferred pixel data must be of even length")
    object.__setattr__(ds, _DEFERRED, pixels)


def deferred_pixels(ds: Dataset) -> DeferredPixels | None:
    """The pixels :func:`defer_pixels` left to the file, if any."""
    value = ds.__dict__.get(_DEFERRED)
    return value if isinstance(value, DeferredPixels) else None


# zlib level of the deflated results. On the Parametric Map of a 1,000 x 512 x 512 covid phantom
# (mostly zeros, values in steps of 1/256) level 3 wrote the objects in 3.7 s where zlib's default
# (6, what pydicom writes) took 7.1 s, into 11.0 MB instead of 6.3 MB (the CT: 501 MB).
DEFLATE_LEVEL = 3


class _Deflater:
    """A write-only stream that deflates what it is given (raw deflate at DEFLATE_LEVEL) into ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._z = zlib.compressobj(DEFLATE_LEVEL, wbits=-zlib.MAX_WBITS)
        self._taken = 0
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = self._z.compress(data)
        self._out.write(chunk)
        self.written += len(chunk)
        self._taken += len(data)
        return len(data)

    def tell(self) -> int:
        return self._taken

    def seek(self, offset: int, whence: int = 0) -> int:
        raise OSError("a deflate stream cannot seek")

    def finish(self) -> None:
        tail = self._z.flush()
        self._out.write(tail)
        self.written += len(tail)
        if self.written % 2:
            self._out.write(b"\x00")


def _file_meta(ds: Dataset) -> FileMetaDataset:
    """The file meta ``dcmwrite(enforce_file_format=True)`` writes for ``ds``."""
    meta = deepcopy(ds.file_meta) if hasattr(ds, "file_meta") else FileMetaDataset()
    if meta.get("MediaStorageSOPClassUID") is None or (
        ds.get("SOPClassUID") and ds.SOPClassUID != meta.MediaStorageSOPClassUID
    ):
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID")
    if meta.get("MediaStorageSOPInstanceUID") is None or (
        ds.get("SOPInstanceUID") and ds.SOPInstanceUID != meta.MediaStorageSOPInstanceUID
    ):
        meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID")
    validate_file_meta(meta, enforce_standard=True)
    return meta


def _big_pixels(ds: Dataset) -> DataElement | None:
    """The pixel element to stream: the data set's last element, of a byte VR and even length."""
    tags = [t for t in PIXEL_TAGS if t in ds]
    if len(tags) != 1 or max(ds.keys()) != tags[0]:
        return None
    elem = ds[tags[0]]
    correct_ambiguous_vr_element(elem, ds, True)
    if elem.VR not in ("OB", "OW", "OF", "OD") or not isinstance(elem.value, bytes):
        return None
    if len(elem.value) % 2 or elem.is_undefined_length:
        return None
    return elem


def write_file(path: Path | str, ds: Dataset) -> None:
    """Write ``ds`` as a Part 10 file at ``path`` (enforcing the file format, as
    ``pydicom.dcmwrite(path, ds, enforce_file_format=True)`` does), streaming a deflated one."""
    meta = getattr(ds, "file_meta", None)
    deferred = deferred_pixels(ds)
    if meta is None or meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        if deferred is not None:
            raise ValueError("deferred pixels are written in Deflated Explicit VR Little Endian only")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        return
    file_meta = _file_meta(ds)
    pixels = None if deferred is not None else _big_pixels(ds)
    with open(path, "wb") as raw:
        head = DicomFileLike(raw)
        head.is_little_endian, head.is_implicit_VR = True, False
        preamble = getattr(ds, "preamble", None) or b"\x00" * 128
        head.write(preamble)
        head.write(b"DICM")
        write_file_meta_info(head, file_meta, enforce_standard=True)
        sink = _Deflater(raw)
        body = DicomFileLike(sink)
        body.is_little_endian, body.is_implicit_VR = True, False
        if deferred is not None:
            tag = Tag(deferred.keyword)
            if any(t > tag for t in ds.keys()):
                raise ValueError(f"elements after {deferred.keyword}: its value cannot be deferred")
            write_dataset(body, ds)
            _write_header(body, tag, deferred.vr, deferred.length)
            written = 0
            for frame in deferred.frames():
                body.write(frame)
                written += len(frame)
            if written != deferred.length:
                raise ValueError(f"deferred {deferred.keyword}: {written} bytes written, {deferred.length} announced")
        elif pixels is None:
            write_dataset(body, ds)
        else:
            del ds[pixels.tag]
            try:
                write_dataset(body, ds)
            finally:
                ds[pixels.tag] = pixels
            value = memoryview(pixels.value)
            _write_header(body, pixels.tag, pixels.VR, len(value))
            for start in range(0, len(value), _CHUNK):
                body.write(value[start : start + _CHUNK])
        sink.finish()


def _write_header(fp: DicomFileLike, tag: BaseTag, vr: str, length: int) -> None:
    """An explicit VR little endian element header with a 32-bit length (OB, OW, OF, OD)."""
    fp.write_tag(tag)
    fp.write(vr.encode("ascii"))
    fp.write_US(0)  # reserved
    fp.write_UL(length)
