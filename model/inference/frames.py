"""The frames of a series: one per single-frame instance, one per frame of an Enhanced image (its
functional groups), each with its position, orientation, pixel spacing and rescale; sorted along
the slice normal; decoded to HU (model.inference.io builds the Volume from them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import iter_pixels
from pydicom.uid import UID

log = logging.getLogger(__name__)

# Orientation vectors of two slices that differ by more than this are "different orientations".
_ORIENTATION_TOLERANCE = 1e-3
# Secondary Capture Image Storage and its multi-frame kinds: pictures, not cross-sections.
_SECONDARY_CAPTURE_UIDS = "1.2.840.10008.5.1.4.1.1.7"


class SeriesReadError(Exception):
    """The input cannot be turned into one volume; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def slice_normal(orientation: Sequence[float] | np.ndarray) -> np.ndarray:
    """Unit normal cross(row direction, column direction) of an Image Orientation (Patient)."""
    o = np.asarray(orientation, dtype=np.float64).reshape(6)
    n = np.cross(o[:3], o[3:])
    norm = float(np.linalg.norm(n))
    if norm < 1e-6:
        raise SeriesReadError(f"Image Orientation (Patient) {list(o)} has parallel row and column directions")
    return n / norm


def dataset_path(ds: Dataset) -> Path | None:
    name = getattr(ds, "filename", None)
    return Path(name) if isinstance(name, (str, Path)) and str(name) else None


def origin_name(origin: Path | Dataset) -> str:
    if isinstance(origin, Path):
        return str(origin)
    path = dataset_path(origin)
    return str(path) if path else "an in-memory dataset"


@dataclass
class FrameRef:
    """One image frame found in the input, before sorting."""

    header: Dataset
    source: Path | Dataset
    frame: int | None  # 1-based in a multi-frame instance
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float


# -- geometry of frames -----------------------------------------------------------------------------


def floats(value: Any, count: int, what: str, where: str) -> np.ndarray:
    """A multi-valued DS/FD attribute (any DICOM value form) as ``count`` floats."""
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SeriesReadError(f"{what} of {where} is not numeric: {value!r}") from exc
    if out.size != count or not np.all(np.isfinite(out)):
        raise SeriesReadError(f"{what} of {where} must be {count} finite numbers, got {value!r}")
    return out


def pair_of(values: np.ndarray) -> tuple[float, float]:
    return float(values[0]), float(values[1])


def group_value(groups: Sequence[Dataset], sequence: str, attribute: str) -> Any:
    """An attribute's value (any DICOM value form) from the first functional group that has it."""
    for group in groups:
        seq = group.get(sequence)
        if seq and attribute in seq[0]:
            return seq[0][attribute].value
    return None


def frames_of(header: Dataset, origin: Path | Dataset) -> list[FrameRef]:
    where = f"image {header.get('SOPInstanceUID', '?')} ({origin_name(origin)})"
    n_frames = int(header.get("NumberOfFrames", 1) or 1)
    shared = header.get("SharedFunctionalGroupsSequence")
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if shared is not None or per_frame is not None:
        return enhanced_frames(header, origin, n_frames, where)
    position = header.get("ImagePositionPatient")
    orientation = header.get("ImageOrientationPatient")
    if position is None:
        modality = str(header.get("Modality", "") or "").strip().upper()
        if modality != "CT" or str(header.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_UIDS):
            what = UID(str(header.get("SOPClassUID", ""))).name or "unknown SOP class"
            raise SeriesReadError(
                f"{where} is not a CT image (modality {modality or 'missing'}, {what}): a CT series is needed"
            )
        raise SeriesReadError(f"{where} has no Image Position (Patient): slices cannot be ordered")
    if orientation is None:
        raise SeriesReadError(f"{where} has no Image Orientation (Patient)")
    if n_frames != 1:
        raise SeriesReadError(f"{where} has {n_frames} frames but no functional groups: frame positions are unknown")
    spacing = header.get("PixelSpacing")
    if spacing is None:
        raise SeriesReadError(f"{where} has no Pixel Spacing")
    return [
        FrameRef(
            header=header,
            source=origin,
            frame=None,
            position=floats(position, 3, "Image Position (Patient)", where),
            orientation=floats(orientation, 6, "Image Orientation (Patient)", where),
            pixel_spacing=pair_of(floats(spacing, 2, "Pixel Spacing", where)),
            slope=float(header.get("RescaleSlope", 1.0) or 1.0),
            intercept=float(header.get("RescaleIntercept", 0.0) or 0.0),
        )
    ]


def enhanced_frames(header: Dataset, origin: Path | Dataset, n_frames: int, where: str) -> list[FrameRef]:
    shared_seq = header.get("SharedFunctionalGroupsSequence")
    shared = [shared_seq[0]] if shared_seq else []
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        got = 0 if per_frame is None else len(per_frame)
        raise SeriesReadError(f"{where} has {n_frames} frames but {got} per-frame functional group items")
    out: list[FrameRef] = []
    for i in range(n_frames):
        groups = [per_frame[i], *shared]
        fwhere = f"frame {i + 1} of {where}"
        position = group_value(groups, "PlanePositionSequence", "ImagePositionPatient")
        orientation = group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = group_value(groups, "PixelMeasuresSequence", "PixelSpacing")
        if position is None:
            raise SeriesReadError(f"{fwhere} has no Plane Position (Patient): slices cannot be ordered")
        if orientation is None:
            orientation = header.get("ImageOrientationPatient")
        if orientation is None:
            raise SeriesReadError(f"{fwhere} has no Plane Orientation")
        if spacing is None:
            spacing = header.get("PixelSpacing")
        if spacing is None:
            raise SeriesReadError(f"{fwhere} has no Pixel Measures (Pixel Spacing)")
        slope = group_value(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = group_value(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is None:
            slope = header.get("RescaleSlope", 1.0)
        if intercept is None:
            intercept = header.get("RescaleIntercept", 0.0)
        out.append(
            FrameRef(
                header=header,
                source=origin,
                frame=i + 1,
                position=floats(position, 3, "Image Position (Patient)", fwhere),
                orientation=floats(orientation, 6, "Image Orientation (Patient)", fwhere),
                pixel_spacing=pair_of(floats(spacing, 2, "Pixel Spacing", fwhere)),
                slope=float(slope if slope not in (None, "") else 1.0),
                intercept=float(intercept if intercept not in (None, "") else 0.0),
            )
        )
    return out


def sorted_frames(frames: list[FrameRef]) -> tuple[list[FrameRef], np.ndarray, np.ndarray]:
    """Frames sorted along the normal; returns (frames, normal, distances along the normal)."""
    first = frames[0]
    rows, cols = int(first.header.Rows), int(first.header.Columns)
    for f in frames:
        if int(f.header.Rows) != rows or int(f.header.Columns) != cols:
            raise SeriesReadError(
                f"images differ in size: {rows}x{cols} and {int(f.header.Rows)}x{int(f.header.Columns)} "
                f"(image {f.header.get('SOPInstanceUID', '?')}); a volume needs one matrix size"
            )
        if np.max(np.abs(f.orientation - first.orientation)) > _ORIENTATION_TOLERANCE:
            raise SeriesReadError(
                f"images differ in orientation: {list(np.round(first.orientation, 4))} and "
                f"{list(np.round(f.orientation, 4))}; a volume needs one orientation (is a localizer in the series?)"
            )
        if np.max(np.abs(np.subtract(f.pixel_spacing, first.pixel_spacing))) > 1e-3 * max(first.pixel_spacing):
            raise SeriesReadError(f"images differ in pixel spacing: {first.pixel_spacing} and {f.pixel_spacing}")
    normal = slice_normal(first.orientation)
    along = np.array([float(np.dot(f.position, normal)) for f in frames])
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    along = along[order]
    if len(frames) > 1:
        distances = np.diff(along)
        if np.any(distances < 1e-3):
            k = int(np.argmin(distances))
            raise SeriesReadError(
                f"two images share the position {along[k]:.3f} mm along the slice normal "
                f"({frames[k].header.get('SOPInstanceUID', '?')}, {frames[k + 1].header.get('SOPInstanceUID', '?')}): "
                "duplicate slices or two acquisitions in one series"
            )
    return frames, normal, along


# -- pixels -----------------------------------------------------------------------------------------


_INT16 = np.iinfo(np.int16)


def decode_frames(frames: list[FrameRef], rows: int, cols: int, compact: bool = False) -> np.ndarray:
    """Stored values of every frame in order, rescaled to float32 HU; with ``compact``, int16
    when every rescaled value is a whole number in int16's range (the same values in half the
    memory: 0.5 GB instead of 1 GB for 1,000 slices of 512 x 512), float32 otherwise. The frames of
    a multi-frame file are decoded one at a time (:func:`_source_frames`)."""
    if str(frames[0].header.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        raise SeriesReadError("MONOCHROME1 images (inverted grey scale) are not CT-like: not supported")
    hu = np.empty((len(frames), rows, cols), dtype=np.int16 if compact else np.float32)
    one = np.empty((rows, cols), dtype=np.float32)
    by_source: dict[int, dict[int, list[int]]] = {}  # source -> frame number (1-based) -> volume indices
    sources: dict[int, Path | Dataset] = {}
    for i, f in enumerate(frames):
        key = id(f.source)
        by_source.setdefault(key, {}).setdefault(f.frame or 1, []).append(i)
        sources[key] = f.source
    for key, wanted in by_source.items():
        source = sources[key]
        where = origin_name(source)
        for number, frame in _source_frames(source, frames[wanted[min(wanted)][0]].header, set(wanted), where):
            if frame.shape != (rows, cols):
                raise SeriesReadError(f"pixel data of {where} has shape {frame.shape}, header says {rows}x{cols}")
            for i in wanted[number]:
                f = frames[i]
                if hu.dtype == np.float32:
                    np.multiply(frame, np.float32(f.slope), out=hu[i], casting="unsafe")
                    hu[i] += np.float32(f.intercept)
                    continue
                np.multiply(frame, np.float32(f.slope), out=one, casting="unsafe")
                one += np.float32(f.intercept)
                if one.size and (
                    float(one.max()) > _INT16.max
                    or float(one.min()) < _INT16.min
                    or not np.array_equal(one, np.rint(one))
                ):
                    # Not whole numbers in range after all: the float32 volume, as without ``compact``.
                    hu = hu.astype(np.float32)
                    hu[i] = one
                    continue
                hu[i] = one
    return hu


_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: iter_pixels cannot read it
# Errors pydicom raises on pixel data it cannot read or decode.
_DECODE_ERRORS = (InvalidDicomError, NotImplementedError, RuntimeError, ValueError, AttributeError, OSError, EOFError)


def _source_frames(
    source: Path | Dataset, header: Dataset, wanted: set[int], where: str
) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, stored values) of the ``wanted`` frames of one file or data set. A
    multi-frame file is read frame by frame (pydicom's iter_pixels on the path: neither its whole
    pixel data nor the whole decoded array in memory; a 1,000-frame Enhanced CT of 512 x 512 is
    0.5 GB each); a single frame, a data set in memory or a deflated file (iter_pixels cannot read one)
    is decoded whole."""
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    if isinstance(source, Path) and int(header.get("NumberOfFrames", 1) or 1) > 1 and syntax != _DEFLATED:
        if int(header.get("SamplesPerPixel", 1) or 1) != 1:
            raise SeriesReadError(
                f"image {header.get('SOPInstanceUID', '?')} ({where}) is not greyscale "
                f"(Samples per Pixel {header.SamplesPerPixel})"
            )
        done = 0
        try:
            for index, frame in enumerate(iter_pixels(source)):
                if index + 1 in wanted:
                    yield index + 1, frame
                    done += 1
                    if done == len(wanted):
                        return
            return
        except _DECODE_ERRORS as exc:
            if done:  # part of the frames are placed already: the file itself is broken
                raise SeriesReadError(f"pixel data of {where} cannot be decoded: {exc}") from exc
            log.debug("%s: frame by frame failed (%s); decoding it whole", where, exc)
    if isinstance(source, Path) and wanted == {1}:
        native = native_frame(source, header)
        if native is not None:
            yield 1, native
            return
    try:
        ds = pydicom.dcmread(source) if isinstance(source, Path) else source
        _check_pixels(ds, where)
        arr = ds.pixel_array
    except SeriesReadError:
        raise
    except _DECODE_ERRORS as exc:
        raise SeriesReadError(f"pixel data of {where} cannot be decoded: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    for number in sorted(wanted):
        if number > arr.shape[0]:
            raise SeriesReadError(f"pixel data of {where} has {arr.shape[0]} frame(s), frame {number} is wanted")
        yield number, arr[number - 1]


_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2": False, "1.2.840.10008.1.2.1": True}  # syntax -> explicit VR
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def native_frame(path: Path, header: Dataset) -> np.ndarray | None:
    """The stored values of a single-frame, uncompressed, little-endian, 16-bit greyscale file,
    read from the file's tail without parsing its header a second time (what nearly every CT
    slice is: the series' second reading was half its reading time). Taken only where the file
    ends with the Pixel Data element whose length is exactly the image's size, the tag and length
    checked at that offset; bits above Bits Stored are cleared (signed: sign-extended) as pydicom
    does. None where any of that does not hold: the caller decodes with pydicom."""
    meta = getattr(header, "file_meta", None)
    explicit = _NATIVE_LITTLE_ENDIAN.get(str(getattr(meta, "TransferSyntaxUID", "") or ""))
    try:
        rows, cols = int(header.Rows), int(header.Columns)
        allocated = int(header.get("BitsAllocated", 0) or 0)
        stored = int(header.get("BitsStored", allocated) or allocated)
        signed = int(header.get("PixelRepresentation", 0) or 0)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if explicit is None or allocated != 16 or samples != 1 or frames != 1 or signed not in (0, 1):
        return None
    if not 1 <= stored <= 16 or rows <= 0 or cols <= 0:
        return None
    size = rows * cols * 2
    head = 12 if explicit else 8
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            start = f.tell() - size - head
            if start < 0:
                return None
            f.seek(start)
            element = f.read(head)
            data = f.read(size)
    except OSError:
        return None
    if len(data) != size or element[:4] != _PIXEL_DATA_TAG:
        return None
    if explicit:
        if element[4:6] not in (b"OW", b"OB") or element[6:8] != b"\x00\x00":
            return None
        length = int.from_bytes(element[8:12], "little")
    else:
        length = int.from_bytes(element[4:8], "little")
    if length != size:
        return None
    arr = np.frombuffer(data, dtype="<i2" if signed else "<u2").reshape(rows, cols).copy()
    if stored < 16:
        shift = 16 - stored
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr


def _check_pixels(ds: Dataset, where: str) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise SeriesReadError(f"image {ds.get('SOPInstanceUID', '?')} ({where}) has no pixel data")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise SeriesReadError(
            f"image {ds.get('SOPInstanceUID', '?')} ({where}) is not greyscale (Samples per Pixel {ds.SamplesPerPixel})"
        )
