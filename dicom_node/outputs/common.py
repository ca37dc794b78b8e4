"""What every output writer shares: the options, the source series, the per-slice references, the
derived UIDs, the algorithm/device identification and the one time stamp of a build.

One rule for UIDs: every UID an output carries comes from :func:`model.contract.uids.derived_uid` with
the source series UID, the model version and the output kind first, so a job that runs twice
produces the same UIDs and PACS sees a replacement, not a duplicate.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless
from scipy import ndimage

from dicom_node import __version__
from dicom_node.outputs import codes
from dicom_node.outputs.geometry import key_slice
from dicom_node.outputs.kinds import KINDS
from model.contract.notice import DICOM_NOTICE
from model.contract.result import SeriesResult
from model.contract.uids import clean_uid, derived_uid

SC_SLICE_MODES = ("lung", "key")
LOSSLESS_TRANSFER_SYNTAXES = (str(ExplicitVRLittleEndian), str(RLELossless))
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
# The multi-frame maps (SEG, Parametric Map) are mostly zeros: written deflated, they are a few
# per cent of their raw size (the sender falls back to Explicit VR Little Endian for a peer that
# does not take the deflated syntax).
MAP_TRANSFER_SYNTAX_UID = DeflatedExplicitVRLittleEndian


@dataclass(frozen=True)
class OutputOptions:
    """Settings of the output writers.

    The UIDs do not depend on the options, so options that change an object's content (thresholds,
    series numbers, names) must be the same for every destination; ``sc_slices`` may differ (the
    SC of one slice is the same object in both modes, a "key" series is a subset).

    ``created`` is the time stamp written into every object (instance creation, content, secondary
    capture and contribution date/time). The worker passes the job's creation time, so a job that
    runs twice produces byte-identical objects; ``None`` means "now" (then only those date/time
    attributes differ between two builds).
    """

    sc_slices: str = "lung"  # "lung": every lung slice; "key": only the key slices
    # Series Number per kind, over each kind's own (dicom_node.outputs.kinds).
    series_numbers: Mapping[str, int] = field(default_factory=dict)
    manufacturer: str = "COVID-CT AI node"
    institution_name: str | None = None
    software_version: str = __version__
    # SC: heatmap values below this are fully transparent.
    overlay_threshold: float = 0.3
    # SEG: used only when the result carries no region labels (then one thresholded segment).
    seg_threshold: float = 0.5
    sc_transfer_syntax_uid: str = str(ExplicitVRLittleEndian)
    created: datetime.datetime | None = None
    # The Parametric Map without its pixels in memory: its frames are computed from the heatmap
    # as its file is written (dicom_node.storage.part10.write_file; the same bytes). For a writer
    # of files (the worker), not for callers that read the pixels of the built object.
    defer_map_pixels: bool = False

    def series_number(self, kind: str) -> int:
        """The Series Number of ``kind``'s objects."""
        return self.series_numbers.get(kind, KINDS[kind].series_number)

    def __post_init__(self) -> None:
        if self.sc_slices not in SC_SLICE_MODES:
            raise ValueError(f"sc_slices: {self.sc_slices!r} is not one of {', '.join(SC_SLICE_MODES)}")
        for kind, value in self.series_numbers.items():
            if kind not in KINDS:
                raise ValueError(f"series_numbers: {kind!r} is not an output kind ({', '.join(KINDS)})")
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
                raise ValueError(f"series_numbers[{kind!r}]: {value!r} is not a positive integer")
        for name in ("overlay_threshold", "seg_threshold"):
            value = getattr(self, name)
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name}: {value!r} is not between 0 and 1")
        for name in ("manufacturer", "software_version"):
            value = getattr(self, name)
            if not value or len(value) > 64:
                raise ValueError(f"{name}: must be 1-64 characters")
        if self.institution_name is not None and len(self.institution_name) > 64:
            raise ValueError("institution_name: must be at most 64 characters")
        if self.sc_transfer_syntax_uid not in LOSSLESS_TRANSFER_SYNTAXES:
            raise ValueError(
                f"sc_transfer_syntax_uid: {self.sc_transfer_syntax_uid!r} is not one of the lossless "
                f"syntaxes {', '.join(LOSSLESS_TRANSFER_SYNTAXES)}"
            )


class VolumeLike(Protocol):
    """What :meth:`SourceSeries.from_volume` needs of ``model.inference.io``'s Volume."""

    @property
    def hu(self) -> np.ndarray: ...

    @property
    def frame_numbers(self) -> Sequence[int | None]: ...

    @property
    def source_files(self) -> Sequence[str | Path | None]: ...


@dataclass(frozen=True)
class SourceSeries:
    """The source series as the writers need it.

    ``datasets``: metadata of each source instance (read with ``stop_before_pixels=True``), keyed
    by SOP Instance UID. ``hu``: the HU volume (slices, rows, columns) in the order of
    ``SeriesResult.sop_instance_uids``, for the secondary-capture background (``None`` when no SC
    is built). ``frame_numbers``: per slice, the 1-based frame of a multi-frame source instance
    (ignored for single-frame instances; required when any source instance is multi-frame).
    """

    datasets: dict[str, Dataset]
    hu: np.ndarray | None = None
    frame_numbers: tuple[int | None, ...] | None = None

    @classmethod
    def from_files(
        cls,
        paths: Iterable[str | Path],
        *,
        hu: np.ndarray | None = None,
        frame_numbers: Sequence[int | None] | None = None,
    ) -> SourceSeries:
        """Read the metadata of the given files (each file once, pixel data skipped)."""
        datasets: dict[str, Dataset] = {}
        seen: set[str] = set()
        for path in paths:
            key = str(path)
            if key in seen:
                continue
            seen.add(key)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            datasets[clean_uid(ds.SOPInstanceUID)] = ds
        return cls(datasets=datasets, hu=hu, frame_numbers=None if frame_numbers is None else tuple(frame_numbers))

    @classmethod
    def from_datasets(
        cls,
        datasets: Iterable[Dataset],
        *,
        hu: np.ndarray | None = None,
        frame_numbers: Sequence[int | None] | None = None,
    ) -> SourceSeries:
        """From datasets already in memory (pixel data, if any, is not used)."""
        by_uid = {clean_uid(ds.SOPInstanceUID): ds for ds in datasets}
        return cls(datasets=by_uid, hu=hu, frame_numbers=None if frame_numbers is None else tuple(frame_numbers))

    @classmethod
    def from_volume(cls, volume: VolumeLike) -> SourceSeries:
        """From ``model.inference.io.load_series``'s Volume: its files' metadata, HU volume and frame numbers."""
        if any(path is None for path in volume.source_files):
            raise ValueError("the volume was loaded from in-memory datasets: use SourceSeries.from_datasets")
        paths = [path for path in volume.source_files if path is not None]
        return cls.from_files(paths, hu=volume.hu, frame_numbers=volume.frame_numbers)


@dataclass(frozen=True)
class SliceRef:
    """One slice of the sorted series: its source instance and, for a multi-frame instance, frame."""

    index: int
    dataset: Dataset
    frame: int | None  # 1-based; None for a single-frame instance

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)


def is_multiframe(ds: Dataset) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1


def _frame_groups(s: SliceRef) -> list[Dataset]:
    """The per-frame then the shared functional groups of a multi-frame slice (empty otherwise)."""
    ds, groups = s.dataset, []
    if s.frame is not None:
        if "PerFrameFunctionalGroupsSequence" in ds:
            groups.append(ds.PerFrameFunctionalGroupsSequence[s.frame - 1])
        if "SharedFunctionalGroupsSequence" in ds:
            groups.append(ds.SharedFunctionalGroupsSequence[0])
    return groups


def _floats(value: object) -> list[float]:
    """DS/FD values (one or many) as floats."""
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [float(str(v)) for v in items]


def _from_groups(s: SliceRef, sequence: str, attribute: str) -> list[float] | None:
    """An attribute of a slice from its frame's functional groups, else from the dataset."""
    for group in _frame_groups(s):
        if sequence in group and attribute in group[sequence][0]:
            return _floats(group[sequence][0][attribute].value)
    value = s.dataset.get(attribute)
    return None if value is None or value == "" else _floats(value)


def slice_orientation(s: SliceRef) -> list[float]:
    """Image Orientation (Patient) of a slice (single-frame, or the frame's functional groups)."""
    value = _from_groups(s, "PlaneOrientationSequence", "ImageOrientationPatient")
    if value is None or len(value) != 6:
        raise ValueError(f"instance {s.sop_instance_uid} has no Image Orientation (Patient) for slice {s.index}")
    return value


def slice_position(s: SliceRef) -> list[float] | None:
    return _from_groups(s, "PlanePositionSequence", "ImagePositionPatient")


def pixel_spacing(s: SliceRef) -> list[float] | None:
    return _from_groups(s, "PixelMeasuresSequence", "PixelSpacing")


def voxel_volume_ml(slices: Sequence[SliceRef]) -> float:
    """Volume of one voxel in millilitres: pixel spacing times the distance between the first two
    slice positions (Slice Thickness for a single slice)."""
    spacing = pixel_spacing(slices[0])
    if spacing is None:
        raise ValueError("the source has no Pixel Spacing: volumes cannot be computed")
    depth = None
    if len(slices) > 1:
        p0, p1 = slice_position(slices[0]), slice_position(slices[1])
        if p0 is not None and p1 is not None:
            depth = float(np.linalg.norm(np.subtract(p1, p0)))
    if not depth:
        thickness = _from_groups(slices[0], "PixelMeasuresSequence", "SliceThickness")
        if not thickness:
            raise ValueError("the source has neither slice positions nor Slice Thickness")
        depth = thickness[0]
    return spacing[0] * spacing[1] * depth / 1000.0


def resolve_slices(result: SeriesResult, sources: SourceSeries) -> list[SliceRef]:
    """Pair every slice of the result with its source instance (and frame); raise ValueError on any
    mismatch between the result, the source metadata and the HU volume."""
    # The result's own rules (decision, per-slice lengths) were checked when it was made.
    if not result.sop_instance_uids:
        raise ValueError("result.sop_instance_uids is empty: nothing to reference")
    n = len(result.sop_instance_uids)
    if sources.frame_numbers is not None and len(sources.frame_numbers) != n:
        raise ValueError(f"sources.frame_numbers has {len(sources.frame_numbers)} entries for {n} slices")
    if sources.hu is not None and sources.hu.shape[0] != n:
        raise ValueError(f"sources.hu has {sources.hu.shape[0]} slices, result.sop_instance_uids {n}")
    slices = []
    for i, uid in enumerate(result.sop_instance_uids):
        ds = sources.datasets.get(clean_uid(uid))
        if ds is None:
            raise ValueError(f"slice {i}: source instance {uid} is not among the source datasets")
        frame = None
        if is_multiframe(ds):
            raw = None if sources.frame_numbers is None else sources.frame_numbers[i]
            if raw is None or not 1 <= int(raw) <= int(ds.NumberOfFrames):
                raise ValueError(
                    f"slice {i}: instance {uid} is multi-frame; a frame number 1-{ds.NumberOfFrames} is needed, got "
                    f"{raw!r}"
                )
            frame = int(raw)
        slices.append(SliceRef(index=i, dataset=ds, frame=frame))
    first = slices[0].dataset
    for s in slices:
        if (
            s.dataset.StudyInstanceUID != first.StudyInstanceUID
            or s.dataset.SeriesInstanceUID != first.SeriesInstanceUID
        ):
            raise ValueError(f"slice {s.index}: instance {s.sop_instance_uid} is from another study or series")
    return slices


@dataclass(frozen=True)
class Segment:
    """One segment of the suspected infection: what the SEG encodes (as ``number`` in
    :meth:`BuildContext.label_volume`) and what the SR's region group references."""

    number: int  # SEG segment number, 1-based
    label: str
    tracking_id: str
    tracking_uid: str
    volume_ml: float
    slice_indices: tuple[int, ...]  # sorted slices with content
    key_index: int  # the slice with the most of it, the first of equals (outputs.geometry.key_slice)


@dataclass
class BuildContext:
    """Everything one build shares: the result, the resolved slices, options, time stamp, UIDs."""

    result: SeriesResult
    sources: SourceSeries
    slices: list[SliceRef]
    options: OutputOptions
    created: datetime.datetime
    _segments: list[Segment] | None = field(default=None, repr=False)
    _label_volume: np.ndarray | None = field(default=None, repr=False)

    @property
    def source_series_uid(self) -> str:
        return clean_uid(self.slices[0].dataset.SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return clean_uid(self.slices[0].dataset.StudyInstanceUID)

    def uid(self, kind: str, *parts: str) -> str:
        """The derived UID of part ``parts`` of output ``kind`` (series, instance, tracking...)."""
        return derived_uid(self.source_series_uid, self.result.model.version, kind, *parts)

    def series_uid(self, kind: str) -> str:
        return self.uid(kind, "series")

    def instance_uid(self, kind: str, *parts: str) -> str:
        return self.uid(kind, "instance", *parts)

    @property
    def device_uid(self) -> str:
        """Device Observer UID: changes with every retrained model (name, version, weights)."""
        model = self.result.model
        return derived_uid("device", model.name, model.version, model.weights_sha256)

    @property
    def has_multiframe_source(self) -> bool:
        return any(s.frame is not None for s in self.slices)

    def algorithm_parameters(self) -> dict[str, str]:
        params = {"classes": ",".join(self.result.model.classes)}
        if self.result.model.weights_sha256:
            params["weights_sha256"] = self.result.model.weights_sha256
        return params

    def sr_algorithm(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 Algorithm Identification (one "Algorithm Parameters" text per parameter)."""
        model = self.result.model
        parameters = [f"{key}={value}" for key, value in self.algorithm_parameters().items()]
        return hd.sr.AlgorithmIdentification(name=model.name, version=model.version, parameters=parameters)

    def seg_algorithm(self) -> hd.AlgorithmIdentificationSequence:
        model = self.result.model
        return hd.AlgorithmIdentificationSequence(
            name=model.name,
            family=codes.ALGORITHM_FAMILY,
            version=model.version,
            source=self.options.manufacturer,
            parameters=self.algorithm_parameters(),
        )

    def contributing_equipment(self) -> hd.ContributingEquipment:
        """The Contributing Equipment item for the algorithm (IHE AIR)."""
        model = self.result.model
        item = hd.ContributingEquipment(
            manufacturer=self.options.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=model.name[:64],
            software_versions=[model.version, self.options.software_version],
            institution_name=self.options.institution_name,
            contribution_datetime=self.created,
            contribution_description=f"AI analysis of chest CT by {model.name} {model.version}. {DICOM_NOTICE}",
        )
        item.DeviceUID = self.device_uid
        return item

    @property
    def model_name(self) -> str:
        """Manufacturer's Model Name of every output (LO: at most 64 characters)."""
        return self.result.model.name[:64]

    def set_software_versions(self, ds: Dataset) -> None:
        """Software Versions of every output: the node's, then the model's."""
        ds.add_new("SoftwareVersions", "LO", [self.options.software_version, self.result.model.version[:64]])

    def series_description(self, what: str) -> str:
        text = f"AI: {what} {NOT_FOR_DIAGNOSTIC_USE}"
        if len(text) > 64:
            raise ValueError(f"series description {text!r} is longer than 64 characters")
        return text

    # -- the suspected-infection segments, shared by SR (region groups) and SEG ------------------

    def segments(self) -> list[Segment]:
        """The segments of the suspected infection: one per region of the result when it carries
        region labels, else one segment of the heatmap above ``seg_threshold``. Empty for a result
        without regions (normal, no_decision)."""
        if self._segments is None:
            self._segments, self._label_volume = self._make_segments()
        return self._segments

    def label_volume(self) -> np.ndarray | None:
        """Per voxel the segment number (0 = none), or None when there are no segments."""
        self.segments()
        return self._label_volume

    def _make_segments(self) -> tuple[list[Segment], np.ndarray | None]:
        result = self.result
        if result.decision == "no_decision" or not result.regions:
            return [], None
        finding = codes.DECISION_NAMES.get(result.decision, result.decision)
        if result.region_labels is not None:
            labels = np.asarray(result.region_labels)
            out = np.zeros(labels.shape, dtype=np.uint8 if len(result.regions) < 256 else np.uint16)
            # Each region within its own box (one pass over the volume for all the boxes): a
            # comparison of the whole volume per region took 1.5-2.6 s on a 1,000-slice series with 9
            # regions, the boxes 0.6 s.
            boxes = ndimage.find_objects(labels)
            segments = []
            for number, region in enumerate(result.regions, start=1):
                box = boxes[region.index - 1] if 0 < region.index <= len(boxes) else None
                mask = labels[box] == region.index if box is not None else None
                if box is None or mask is None or not mask.any():
                    raise ValueError(f"region {region.index} has no voxel in result.region_labels")
                out[box][mask] = number
                first = int(box[0].start or 0)
                z = np.flatnonzero(mask.any(axis=(1, 2))) + first
                segments.append(
                    Segment(
                        number=number,
                        label=f"Suspected infection {number}",
                        tracking_id=f"Suspected infection region {number} ({finding})"[:64],
                        tracking_uid=self.uid("region", str(number), "tracking"),
                        volume_ml=float(region.volume_ml),
                        slice_indices=tuple(int(i) for i in z),
                        key_index=first + key_slice(mask),
                    )
                )
            return segments, out
        if result.heatmap is None:
            return [], None
        mask = np.asarray(result.heatmap) >= self.options.seg_threshold
        if not mask.any():
            return [], None
        z = np.flatnonzero(mask.any(axis=(1, 2)))
        segment = Segment(
            number=1,
            label="Suspected infection",
            tracking_id=f"Suspected infection ({finding})"[:64],
            tracking_uid=self.uid("region", "1", "tracking"),
            volume_ml=float(mask.sum()) * voxel_volume_ml(self.slices),
            slice_indices=tuple(int(i) for i in z),
            key_index=key_slice(mask),
        )
        return [segment], mask.astype(np.uint8)


def stamp(ds: Dataset, created: datetime.datetime) -> None:
    """Write the build's time stamp over every date/time highdicom filled with "now", so that two
    builds with the same ``created`` are byte-identical."""
    date, time = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    if "ContentDate" in ds:
        ds.ContentDate = date
        ds.ContentTime = time
    if "DateOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture = date
        ds.TimeOfSecondaryCapture = time
    for item in ds.get("ContributingEquipmentSequence", []):
        if item.get("ManufacturerModelName") == "highdicom":
            item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S")
