"""Phantoms as DICOM: a CT series (single-frame CT Image Storage or one Enhanced CT instance) in
any of the transfer syntaxes the node accepts, with the ground truth (lung and lesion masks, the
phantom's description) written beside the series folder. UIDs follow the project's one UID rule
(model.contract.uids)."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from model.contract.notice import PHANTOM_NOTICE
from model.contract.uids import clean_uid, derived_uid
from model.phantoms.phantom import Phantom, make_phantom

TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": str(ExplicitVRLittleEndian),
    "implicit": str(ImplicitVRLittleEndian),
    "deflate": str(DeflatedExplicitVRLittleEndian),
    "rle": str(RLELossless),
    "jpeg-ls": str(JPEGLSLossless),
    "jpeg2000": str(JPEG2000Lossless),
}
_COMPRESSED = {str(RLELossless), str(JPEGLSLossless), str(JPEG2000Lossless)}
MASKS_SUFFIX = ".masks.npz"


def transfer_syntax_uid(name: str) -> str:
    """A key of :data:`TRANSFER_SYNTAXES` (``explicit``, ``rle``, ...) or one of their UIDs."""
    if name in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[name]
    if name in TRANSFER_SYNTAXES.values():
        return name
    raise ValueError(f"transfer syntax {name!r} is not one of {', '.join(TRANSFER_SYNTAXES)} (or their UIDs)")


def masks_path(series_dir: Path | str) -> Path:
    """Where :func:`write_phantom_series` puts the ground truth of ``series_dir``: next to the
    folder, ``<folder name>.masks.npz``, so that the series folder holds only DICOM files."""
    series_dir = Path(series_dir)
    return series_dir.parent / f"{series_dir.name}{MASKS_SUFFIX}"


@dataclass
class PhantomTruth:
    """Ground truth written beside a phantom series (slices in :class:`model.inference.io.Volume` order)."""

    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    meta: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])


def read_phantom_meta(series_dir: Path | str) -> dict[str, Any] | None:
    """The metadata (kind, seeds, lesion fraction ...) of the masks file beside ``series_dir``,
    without reading the masks; None when there is no masks file."""
    path = masks_path(series_dir)
    if not path.is_file():
        return None
    with np.load(path) as data:
        meta: dict[str, Any] = json.loads(str(data["meta"]))
    return meta


def read_phantom_truth(series_dir: Path | str) -> PhantomTruth:
    """The masks and metadata that :func:`write_phantom_series` wrote for ``series_dir``."""
    path = masks_path(series_dir)
    with np.load(path) as data:
        return PhantomTruth(
            lung_mask=data["lung_mask"].astype(bool),
            lesion_mask=data["lesion_mask"].astype(bool),
            meta=json.loads(str(data["meta"])),
        )


def write_phantom_series(
    phantom_or_kind: Phantom | str,
    out_dir: Path | str,
    *,
    seed: int | None = None,
    transfer_syntax: str = "explicit",
    signed: bool | None = None,
    reverse_instance_numbers: bool | None = None,
    shuffle_file_names: bool = True,
    multiframe: bool = False,
    per_frame_rescale: bool | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_number: int = 1,
    write_masks: bool = True,
    **phantom_kwargs: Any,
) -> Path:
    """Write a phantom as a CT Image Storage series (one file per slice) or, with ``multiframe``,
    one Enhanced CT Image Storage file; returns ``out_dir``.

    ``phantom_or_kind``: a :class:`Phantom`, or a kind for :func:`make_phantom` (``seed`` and
    ``phantom_kwargs`` such as ``slices``, ``rows``, ``columns`` go to it). Options left at None are
    drawn from the seed: ``signed`` (int16 with intercept 0, or 12-bit unsigned with intercept
    -1024), ``reverse_instance_numbers`` (instance 1 at the head end instead of the feet end) and,
    for multi-frame, ``per_frame_rescale`` (Pixel Value Transformation per frame instead of shared).
    File names are random (from the seed) unless ``shuffle_file_names`` is False. UIDs come from
    :func:`model.contract.uids.derived_uid` of the seed and the image content, so one seed gives one
    series. ``transfer_syntax``: see :data:`TRANSFER_SYNTAXES` (all lossless).

    The ground truth goes to :func:`masks_path` (``<out_dir>.masks.npz`` beside the folder, arrays
    ``lung_mask`` and ``lesion_mask`` in the sorted slice order of :class:`model.inference.io.Volume`, and
    ``meta`` JSON); read it with :func:`read_phantom_truth`.
    """
    if isinstance(phantom_or_kind, Phantom):
        if phantom_kwargs:
            raise TypeError(f"phantom options {sorted(phantom_kwargs)} given with a ready phantom")
        phantom = phantom_or_kind
        seed = phantom.seed if seed is None else seed
    else:
        seed = 0 if seed is None else seed
        phantom = make_phantom(phantom_or_kind, seed=seed, **phantom_kwargs)
    ts = transfer_syntax_uid(transfer_syntax)
    rng = np.random.default_rng([seed, 5])
    signed = bool(rng.random() < 0.5) if signed is None else signed
    reverse = bool(rng.random() < 0.5) if reverse_instance_numbers is None else reverse_instance_numbers
    per_frame = bool(rng.random() < 0.5) if per_frame_rescale is None else per_frame_rescale
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    n = phantom.shape[0]
    stored, intercept, bits = _encode(phantom.hu, signed)
    content = (
        f"{phantom.kind}|{phantom.seed}|{phantom.patient_seed}|{phantom.shape}|{phantom.spacing}|"
        f"{phantom.noise_sigma:.4f}"
    )
    study = clean_uid(study_uid) if study_uid else derived_uid("phantom", "study", content)
    series = derived_uid("phantom", "series", content, "enhanced" if multiframe else "single")
    for_uid = derived_uid("phantom", "frame-of-reference", content)
    order = list(range(n - 1, -1, -1)) if reverse else list(range(n))  # instance/frame order
    when = _acquisition_time(seed)
    common = _common_dataset(phantom, seed, study, series, for_uid, patient_id, patient_name, series_number, when)
    if multiframe:
        sop = derived_uid("phantom", "instance", content, "enhanced")
        ds = _enhanced_ct(common, phantom, stored[order], order, intercept, bits, signed, per_frame, sop)
        name = f"{rng.integers(16**12):012x}.dcm" if shuffle_file_names else "EN00001.dcm"
        _save(ds, out / name, ts, stored[order])
    else:
        names = (
            [f"{v:012x}.dcm" for v in rng.choice(16**12, size=n, replace=False)]
            if shuffle_file_names
            else [f"IM{i + 1:05d}.dcm" for i in range(n)]
        )
        for instance, k in enumerate(order, start=1):
            sop = derived_uid("phantom", "instance", content, str(k))
            ds = _ct_image(common, phantom, stored[k], k, instance, intercept, bits, signed, sop)
            _save(ds, out / names[instance - 1], ts, stored[k])
    if write_masks:
        meta = phantom.describe() | {
            "series_uid": series,
            "study_uid": study,
            "transfer_syntax": ts,
            "signed": signed,
            "reverse_instance_numbers": reverse,
            "multiframe": multiframe,
        }
        np.savez_compressed(
            masks_path(out),
            lung_mask=phantom.lung_mask,
            lesion_mask=phantom.lesion_mask,
            meta=np.array(json.dumps(meta)),
        )
    return out


def phantom_series_description(kind: str, seed: int) -> str:
    """The series description: synthetic, its kind and seed (at most 64 characters, LO)."""
    text = f"SYNTHETIC phantom {kind} seed {seed} - not a patient"
    return text if len(text) <= 64 else f"SYNTHETIC phantom {kind} seed {seed}"[:64]


def _encode(hu: np.ndarray, signed: bool) -> tuple[np.ndarray, float, int]:
    """(stored values, rescale intercept, bits stored) of HU (slope 1)."""
    v = np.rint(hu)
    if signed:
        return np.clip(v, -32768, 32767).astype(np.int16), 0.0, 16
    return np.clip(v + 1024.0, 0, 4095).astype(np.uint16), -1024.0, 12


def _acquisition_time(seed: int) -> datetime.datetime:
    base = datetime.datetime(2020, 1, 1, 8, 0, 0)
    return base + datetime.timedelta(days=int(seed) % 700, minutes=int(seed) * 7 % 600)


def _common_dataset(
    phantom: Phantom,
    seed: int,
    study: str,
    series: str,
    for_uid: str,
    patient_id: str | None,
    patient_name: str | None,
    series_number: int,
    when: datetime.datetime,
) -> Dataset:
    """Patient, study, series, frame of reference and equipment attributes shared by every instance."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Each phantom its own synthetic patient (kind and patient seed), so that viewers do not group
    # unrelated phantoms as one patient; a data set names its patients (patient_id) itself.
    ds.PatientID = patient_id or f"PHANTOM-{phantom.kind.upper()}-{phantom.patient_seed}"
    ds.PatientName = patient_name or f"PHANTOM^{ds.PatientID.removeprefix('PHANTOM-')}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom: no patient data"
    ds.StudyInstanceUID = study
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"PH{seed % 100000}"
    ds.AccessionNumber = ""
    ds.StudyDescription = "CT CHEST (synthetic phantom)"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.SeriesDescription = phantom_series_description(phantom.kind, seed)
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "COVID-CT node phantom"
    ds.ManufacturerModelName = "model.phantoms"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "Synthetic"
    ds.KVP = f"{phantom.kvp:g}"
    ds.AcquisitionNumber = 1
    ds.ImageComments = PHANTOM_NOTICE
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = phantom.shape[1], phantom.shape[2]
    ds.BitsAllocated = 16
    return ds


def _ct_image(
    common: Dataset,
    phantom: Phantom,
    stored: np.ndarray,
    k: int,
    instance: int,
    intercept: float,
    bits: int,
    signed: bool,
    sop: str,
) -> Dataset:
    ds = Dataset()
    ds.update(common)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = instance
    ds.ContentDate, ds.ContentTime = common.StudyDate, common.StudyTime
    ds.AcquisitionDate, ds.AcquisitionTime = common.StudyDate, common.StudyTime
    position = phantom.image_positions[k]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in phantom.orientation]
    ds.PixelSpacing = [_ds(phantom.spacing[1]), _ds(phantom.spacing[2])]
    ds.SliceThickness = _ds(phantom.slice_thickness)
    ds.SliceLocation = _ds(position[2])
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    ds.ReconstructionDiameter = _ds(phantom.spacing[1] * max(phantom.shape[1], phantom.shape[2]))
    ds.ConvolutionKernel = "LUNG"
    ds.GantryDetectorTilt = "0"
    ds.RotationDirection = "CW"
    ds.XRayTubeCurrent = 200
    ds.PixelData = stored.tobytes()
    return ds


def _enhanced_ct(
    common: Dataset,
    phantom: Phantom,
    frames: np.ndarray,
    order: list[int],
    intercept: float,
    bits: int,
    signed: bool,
    per_frame_rescale: bool,
    sop: str,
) -> Dataset:
    """An Enhanced CT Image (multi-frame): plane positions per frame, pixel measures and
    orientation shared, Pixel Value Transformation shared or per frame."""
    ds = Dataset()
    ds.update(common)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = common.StudyDate, common.StudyTime
    ds.AcquisitionDateTime = common.StudyDate + common.StudyTime
    ds.AcquisitionDuration = 5.0
    ds.ContentQualification = "PRODUCT"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.PresentationLUTShape = "IDENTITY"
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.NumberOfFrames = len(order)
    dim_org = derived_uid("phantom", "dimension-organization", sop)
    org = Dataset()
    org.DimensionOrganizationUID = dim_org
    ds.DimensionOrganizationSequence = [org]
    index = Dataset()
    index.DimensionOrganizationUID = dim_org
    index.DimensionIndexPointer = 0x00209057  # In-Stack Position Number
    index.FunctionalGroupPointer = 0x00209111  # Frame Content Sequence
    ds.DimensionIndexSequence = [index]

    def rescale() -> Dataset:
        item = Dataset()
        item.RescaleIntercept = _ds(intercept)
        item.RescaleSlope = "1"
        item.RescaleType = "HU"
        return item

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(phantom.spacing[1]), _ds(phantom.spacing[2])]
    measures.SliceThickness = _ds(phantom.slice_thickness)
    shared.PixelMeasuresSequence = [measures]
    plane = Dataset()
    plane.ImageOrientationPatient = [_ds(v) for v in phantom.orientation]
    shared.PlaneOrientationSequence = [plane]
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    frame_type.PixelPresentation = "MONOCHROME"
    frame_type.VolumetricProperties = "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = [frame_type]
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = "-600", "1500"
    shared.FrameVOILUTSequence = [voi]
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = [rescale()]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    n = len(order)
    for k in order:
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = n - k if order[0] > order[-1] else k + 1
        content.DimensionIndexValues = [int(content.InStackPositionNumber)]
        content.FrameAcquisitionNumber = 1
        item.FrameContentSequence = [content]
        pos = Dataset()
        pos.ImagePositionPatient = [_ds(v) for v in phantom.image_positions[k]]
        item.PlanePositionSequence = [pos]
        if per_frame_rescale:
            item.PixelValueTransformationSequence = [rescale()]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = frames.tobytes()
    return ds


def _ds(value: float) -> str:
    """A DS string (at most 16 characters)."""
    for digits in range(12, 4, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value!r} does not fit a DS")


def _save(ds: Dataset, path: Path, ts: str, stored: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if ts in _COMPRESSED:
        ds.compress(ts, stored, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = UID(ts)
    ds.save_as(path, enforce_file_format=True)
