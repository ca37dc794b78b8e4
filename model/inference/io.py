"""Reading one CT series into a HU volume in patient order.

:func:`load_series` takes a folder (searched recursively), a list of files or a list of pydicom
Datasets and returns a :class:`Volume`: float32 HU (slices, rows, columns) sorted ascending along
the slice normal (``cross(row direction, column direction)`` of Image Orientation (Patient); feet
to head for an axial head-first-supine series), with per slice the source SOP Instance UID, frame
number and file. Order comes from Image Position (Patient) projected on the normal, never from
Instance Number or file names. Single-frame CT/MR/... images and Enhanced (multi-frame) images with
functional groups are read; every transfer syntax pydicom decodes with the installed plugins
(JPEG lossless, JPEG-LS, JPEG 2000, RLE, deflate) works.

Files that are not DICOM, or DICOM without an image (DICOMDIR, SR, KOS, presentation states), are
ignored. Anything else that stops a volume from being built raises :class:`SeriesReadError` with a
reason a person can act on.

:func:`read_series_headers` is the metadata-only reader (``stop_before_pixels``); :func:`check_chest_ct`
is the one home of the header-level "is this a chest CT at all" check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, Sized

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model.inference.frames import (
    FrameRef,
    SeriesReadError,
    dataset_path,
    decode_frames,
    frames_of,
    group_value,
    origin_name,
    slice_normal,
    sorted_frames,
)

log = logging.getLogger(__name__)

# HU below this (padding outside the reconstruction circle, e.g. -2000 or -3024) is set to air.
AIR_HU = -1024.0
# Slice distances that differ from the median by more than this fraction are reported as uneven.
_SPACING_TOLERANCE = 0.05
# SOP classes (or media storage classes) that carry no image even when they have Rows.
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
# Body parts (BodyPartExamined, upper case) that rule out a chest CT. Absent or other values pass.
NON_CHEST_BODY_PARTS: frozenset[str] = frozenset(
    {
        "HEAD",
        "BRAIN",
        "SKULL",
        "NECK",
        "CSPINE",
        "LSPINE",
        "PELVIS",
        "HIP",
        "KNEE",
        "ANKLE",
        "FOOT",
        "HAND",
        "WRIST",
        "ELBOW",
        "SHOULDER",
        "EXTREMITY",
        "LEG",
        "ARM",
    }
)


@dataclass
class Volume:
    """One series as a HU volume in patient order (see the module docstring for the order)."""

    hu: np.ndarray  # float32 (slices, rows, columns); int16 when loaded ``compact`` and exact
    spacing: tuple[float, float, float]  # (slice distance from positions, row spacing, column spacing) mm
    sop_instance_uids: list[str]
    frame_numbers: list[int | None]  # 1-based frame of a multi-frame source; None for single-frame
    source_files: list[Path | None]  # per slice; None for an in-memory Dataset without a file name
    image_positions: np.ndarray  # (slices, 3) mm, Image Position (Patient) of each sorted slice
    orientation: np.ndarray  # (6,) Image Orientation (Patient)
    rows: int
    columns: int
    study_uid: str
    series_uid: str
    modality: str
    body_part: str  # BodyPartExamined, upper case, "" when absent
    sop_class_uid: str = ""
    frame_of_reference_uid: str = ""
    patient_id: str = ""
    patient_position: str = ""  # e.g. HFS
    image_type: tuple[str, ...] = ()
    series_description: str = ""
    study_description: str = ""
    protocol_name: str = ""
    manufacturer: str = ""
    slice_thickness: float | None = None  # SliceThickness as recorded (not used for geometry)
    # Distances between consecutive sorted slices along the normal (slices - 1,), mm.
    slice_distances: np.ndarray = field(default_factory=lambda: np.zeros(0))
    warnings: list[str] = field(default_factory=list)  # non-fatal oddities (uneven spacing, ...)

    @property
    def shape(self) -> tuple[int, int, int]:
        slices, rows, columns = self.hu.shape
        return int(slices), int(rows), int(columns)

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal, cross(row direction, column direction)."""
        return slice_normal(self.orientation)

    @property
    def is_axial(self) -> bool:
        """True when the slice normal is within 30 degrees of the patient's z axis."""
        return bool(abs(self.normal[2]) >= np.cos(np.deg2rad(30.0)))

    @property
    def superior_last(self) -> bool | None:
        """True when the last sorted slice is the most superior (head end), False when it is the
        most inferior, None for a non-axial series."""
        if not self.is_axial:
            return None
        return bool(self.normal[2] > 0)

    @property
    def uniform_spacing(self) -> bool:
        if self.slice_distances.size == 0:
            return True
        d = self.slice_distances
        return bool(np.all(np.abs(d - self.spacing[0]) <= _SPACING_TOLERANCE * self.spacing[0]))

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


@dataclass
class SeriesHeaders:
    """Metadata of one series (no pixel data for files): one header per image instance.

    ``files``: the file of each header (None for an in-memory Dataset without a file name).
    ``sources``: where each header's pixels are: its file, or the caller's in-memory Dataset.
    """

    series_uid: str
    headers: list[Dataset]
    files: list[Path | None]
    sources: list[Path | Dataset]

    @property
    def first(self) -> Dataset:
        return self.headers[0]


# -- discovering files ------------------------------------------------------------------------------


def _is_image_header(ds: Dataset) -> bool:
    """A header (read without pixels) that describes an image instance."""
    meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if meta_class == _DICOMDIR_UID or "DirectoryRecordSequence" in ds:
        return False
    return "Rows" in ds and "Columns" in ds and "SOPInstanceUID" in ds


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file, or None for a file that is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_series_headers(
    source: Path | str | Sequence[Path | str] | Sequence[Dataset], series_uid: str | None = None
) -> SeriesHeaders:
    """Metadata-only reading of one series (``stop_before_pixels`` for files).

    Non-DICOM and non-image files are skipped. Raises :class:`SeriesReadError` when no image is
    found, when several series are present and ``series_uid`` does not pick one, or when
    ``series_uid`` is not among them.
    """
    groups = scan_series(source)
    if not groups:
        raise SeriesReadError(f"no DICOM images found in {_describe(source)}")
    if series_uid is not None:
        if series_uid not in groups:
            raise SeriesReadError(
                f"series {series_uid} is not in {_describe(source)} (found: {', '.join(sorted(groups))})"
            )
        return groups[series_uid]
    if len(groups) > 1:
        found = "; ".join(f"{uid} ({len(g.headers)} images)" for uid, g in sorted(groups.items()))
        raise SeriesReadError(f"{len(groups)} series found in {_describe(source)}, expected one: {found}")
    return next(iter(groups.values()))


def scan_series(source: Path | str | Sequence[Path | str] | Sequence[Dataset]) -> dict[str, SeriesHeaders]:
    """All image series in the input, keyed by Series Instance UID (headers only for files)."""
    groups: dict[str, SeriesHeaders] = {}
    for header, origin in _iter_headers(source):
        if not _is_image_header(header):
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise SeriesReadError(
                f"image {header.get('SOPInstanceUID', '?')} in {origin_name(origin)} has no Series Instance UID"
            )
        group = groups.setdefault(uid, SeriesHeaders(series_uid=uid, headers=[], files=[], sources=[]))
        group.headers.append(header)
        group.files.append(origin if isinstance(origin, Path) else dataset_path(origin))
        group.sources.append(origin)
    return groups


def _iter_headers(
    source: Path | str | Sequence[Path | str] | Sequence[Dataset],
) -> Iterable[tuple[Dataset, Path | Dataset]]:
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if folder.is_file():
            paths = [folder]
        elif folder.is_dir():
            paths = _list_files(folder)
        else:
            raise SeriesReadError(f"{folder} does not exist")
        for path in paths:
            header = _read_header(path)
            if header is not None:
                yield header, path
        return
    items = list(source)
    for item in items:
        if isinstance(item, Dataset):
            yield item, item
        elif isinstance(item, (str, Path)):
            path = Path(item)
            if not path.is_file():
                raise SeriesReadError(f"{path} is not a file")
            header = _read_header(path)
            if header is not None:
                yield header, path
        else:
            raise TypeError(f"expected a path or a pydicom Dataset, got {type(item).__name__}")


def _describe(source: object) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, Sized):
        return f"the {len(source)} given items"
    return "the given items"


# -- the reader -------------------------------------------------------------------------------------


def load_series(
    source: Path | str | Sequence[Path | str] | Sequence[Dataset],
    series_uid: str | None = None,
    *,
    compact: bool = False,
) -> Volume:
    """Read one series into a :class:`Volume` (see the module docstring).

    ``source``: a folder (searched recursively), a file, a list of files or a list of Datasets.
    ``series_uid`` picks one series when the input holds several (otherwise that is an error).
    HU below -1024 (padding outside the reconstruction circle) is set to -1024. ``compact``: the
    HU as int16 where that holds them exactly (model.inference.frames.decode_frames), for a reader
    that only casts slices of it (the node's worker: half the memory of a thin-slice series).
    """
    group = read_series_headers(source, series_uid)
    frames: list[FrameRef] = []
    for header, origin in zip(group.headers, group.sources):
        frames.extend(frames_of(header, origin))
    frames, normal, along = sorted_frames(frames)
    first = frames[0].header
    rows, cols = int(first.Rows), int(first.Columns)
    hu = decode_frames(frames, rows, cols, compact=compact)
    np.maximum(hu, hu.dtype.type(AIR_HU), out=hu)

    warnings: list[str] = []
    distances = np.diff(along)
    if distances.size:
        slice_distance = float(np.median(distances))
        uneven = np.abs(distances - slice_distance) > _SPACING_TOLERANCE * slice_distance
        if np.any(uneven):
            warnings.append(
                f"uneven slice spacing: distances from {distances.min():.3f} to {distances.max():.3f} mm "
                f"(median {slice_distance:.3f}); {int(uneven.sum())} gaps differ by more than {_SPACING_TOLERANCE:.0%}"
            )
    else:
        slice_distance = _single_slice_depth(first)
    positions = np.stack([f.position for f in frames])
    # In-plane offsets of the slice origins: constant for a plain stack, drifting with gantry tilt.
    offsets = positions - np.outer(along, normal)
    drift = float(np.max(np.linalg.norm(offsets - offsets[0], axis=1)))
    if drift > 2.0:
        warnings.append(f"slice origins drift {drift:.1f} mm in-plane across the series (gantry tilt?)")

    row_spacing, col_spacing = frames[0].pixel_spacing
    thickness = _thickness(first)
    body_part = str(first.get("BodyPartExamined", "") or "").strip().upper()
    volume = Volume(
        hu=hu,
        spacing=(float(slice_distance), float(row_spacing), float(col_spacing)),
        sop_instance_uids=[str(f.header.SOPInstanceUID) for f in frames],
        frame_numbers=[f.frame for f in frames],
        source_files=[f.source if isinstance(f.source, Path) else dataset_path(f.source) for f in frames],
        image_positions=positions,
        orientation=frames[0].orientation.copy(),
        rows=rows,
        columns=cols,
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        series_uid=group.series_uid,
        modality=str(first.get("Modality", "") or "").strip().upper(),
        body_part=body_part,
        sop_class_uid=str(first.get("SOPClassUID", "") or ""),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
        patient_id=str(first.get("PatientID", "") or ""),
        patient_position=str(first.get("PatientPosition", "") or "").strip().upper(),
        image_type=tuple(str(v).upper() for v in _multi(first.get("ImageType"))),
        series_description=str(first.get("SeriesDescription", "") or ""),
        study_description=str(first.get("StudyDescription", "") or ""),
        protocol_name=str(first.get("ProtocolName", "") or ""),
        manufacturer=str(first.get("Manufacturer", "") or ""),
        slice_thickness=thickness,
        slice_distances=distances,
        warnings=warnings,
    )
    for w in warnings:
        log.info("series %s: %s", volume.series_uid, w)
    return volume


def _multi(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _thickness(header: Dataset) -> float | None:
    value = header.get("SliceThickness")
    if value in (None, ""):
        shared = header.get("SharedFunctionalGroupsSequence")
        value = group_value([shared[0]], "PixelMeasuresSequence", "SliceThickness") if shared else None
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _single_slice_depth(header: Dataset) -> float:
    for name in ("SpacingBetweenSlices",):
        value = header.get(name)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    thickness = _thickness(header)
    return thickness if thickness and thickness > 0 else 1.0


# -- is it a chest CT at all ------------------------------------------------------------------------


def check_chest_ct(volume: Volume) -> tuple[bool, str]:
    """Header-level check that a series can be a chest CT: (ok, reason).

    Refuses another modality, a non-axial series, a localizer/derived-reformat image type and a
    BodyPartExamined that names another region. It cannot see anatomy: a CT whose header says
    nothing useful passes, and the lung mask then decides (no lungs: not a chest CT).
    """
    if volume.modality != "CT":
        return False, f"not a CT series (modality {volume.modality or 'missing'})"
    if not volume.is_axial:
        n = np.round(volume.normal, 3).tolist()
        return False, f"not an axial series (slice normal {n})"
    if "LOCALIZER" in volume.image_type:
        return False, "a localizer (scout) series, not a cross-sectional CT"
    if volume.body_part and volume.body_part in NON_CHEST_BODY_PARTS:
        return False, f"body part examined is {volume.body_part}, not chest"
    return True, ""
