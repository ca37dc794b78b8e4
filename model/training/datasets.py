"""Training and evaluation data from three folder layouts.

Layouts (:func:`discover`):

- ``dicom``: ``DATA/<series folder>/...`` DICOM files + ``DATA/labels.csv`` with columns
  ``series,label,patient_id`` (series = folder relative to DATA). Phantom data sets
  (``dicom-node phantom-dataset``) have this layout, with masks beside each folder.
- ``nifti``: ``DATA/<file>.nii[.gz]`` volumes (MosMedData style) + ``DATA/labels.csv`` (series =
  file relative to DATA). Arrays are reoriented to the closest canonical (RAS) orientation and then
  laid out like :class:`model.inference.io.Volume` (rows anterior -> posterior, columns patient right ->
  left, slices feet -> head).
- ``ccccii``: the CC-CCII layout ``ROOT/<CLASS>/<PATIENT>/<SCAN>/<n>.png|jpg`` with classes NCP,
  CP, Normal. Slices are ordered by the number in the file name (all that the layout gives). The
  images are 8-bit greyscale with no HU scale: they are mapped to HU assuming the lung window
  W1500/L-600 (0 -> -1350 HU, 255 -> 150 HU) and an assumed voxel spacing. Patient ids are
  ``CLASS/PATIENT`` (patient numbers are only unique within a class folder).

Labels are normalised to covid / cap / normal (:func:`normalise_label`).

model.training.cache turns records into prepared, cached slices (exactly as inference computes
them); model.training.replicas writes small NIfTI and CC-CCII replicas from phantoms.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

from model.contract.result import CLASSES
from model.contract.uids import derived_uid
from model.inference.io import AIR_HU, SeriesReadError, Volume, load_series, scan_series
from model.inference.preprocess import (
    LUNG_WINDOW,
    window_bounds,
)
from model.phantoms.writer import masks_path, read_phantom_meta, read_phantom_truth

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("dicom", "nifti", "ccccii")
LABELS_CSV = "labels.csv"
CCCCII_CLASSES: dict[str, str] = {"NCP": "covid", "CP": "cap", "Normal": "normal"}
CCCCII_SPACING: tuple[float, float, float] = (5.0, 0.75, 0.75)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_LABEL_ALIASES: dict[str, str] = {
    "covid": "covid",
    "covid19": "covid",
    "covid-19": "covid",
    "covid_19": "covid",
    "ncp": "covid",
    "sars-cov-2": "covid",
    "cap": "cap",
    "cp": "cap",
    "pneumonia": "cap",
    "community-acquired pneumonia": "cap",
    "community acquired pneumonia": "cap",
    "normal": "normal",
    "np": "normal",
    "non-pneumonia": "normal",
    "non pneumonia": "normal",
    "nonpneumonia": "normal",
    "no pneumonia": "normal",
    "healthy": "normal",
    "negative": "normal",
}


def normalise_label(value: str) -> str:
    """covid / cap / normal from a label or a common alias (NCP, CP, Normal, COVID-19, CAP, NP,
    non-pneumonia, ...); ValueError for anything else."""
    key = str(value).strip().lower()
    if key in _LABEL_ALIASES:
        return _LABEL_ALIASES[key]
    raise ValueError(
        f"label {value!r} is not one of {', '.join(CLASSES)} or a known alias ({', '.join(sorted(_LABEL_ALIASES))})"
    )


@dataclass(frozen=True)
class SeriesRecord:
    """One labelled series of a data set, before reading."""

    series_id: str  # relative path of the series folder / volume file / CLASS/PATIENT/SCAN
    label: str  # covid / cap / normal
    patient_id: str
    source: Path  # DICOM folder, NIfTI file or CC-CCII scan folder
    layout: str  # one of LAYOUTS


# -- discovering ------------------------------------------------------------------------------------


def read_labels_csv(path: Path | str) -> list[tuple[str, str, str]]:
    """Rows (series, label, patient_id) of a labels CSV; patient_id defaults to the series.

    Needs a header with ``series`` and ``label`` (``patient_id`` optional); labels are normalised.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        if "series" not in fields or "label" not in fields:
            raise ValueError(f"{path}: needs columns series,label[,patient_id], has {fields}")
        rows = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not row.get("series"):
                raise ValueError(f"{path}:{line}: empty series")
            try:
                label = normalise_label(row["label"])
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from exc
            rows.append((row["series"], label, row.get("patient_id") or row["series"]))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _resolve(data_dir: Path, series: str, path: Path) -> Path:
    source = (data_dir / series).resolve()
    if not source.is_relative_to(data_dir.resolve()):
        raise ValueError(f"{path}: series {series!r} points outside {data_dir}")
    if not source.exists():
        raise ValueError(f"{path}: series {series!r} does not exist under {data_dir}")
    return source


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def discover_labelled(data_dir: Path | str, labels_csv: Path | str | None = None) -> list[SeriesRecord]:
    """Records of a ``dicom`` or ``nifti`` layout (decided per row: a NIfTI file, else a folder)."""
    data_dir = Path(data_dir)
    labels = Path(labels_csv) if labels_csv is not None else data_dir / LABELS_CSV
    records = []
    for series, label, patient in read_labels_csv(labels):
        source = _resolve(data_dir, series, labels)
        if source.is_file() and _is_nifti(source):
            layout = "nifti"
        elif source.is_dir():
            layout = "dicom"
        else:
            raise ValueError(f"{labels}: series {series!r} is neither a folder of DICOM files nor a .nii/.nii.gz file")
        records.append(SeriesRecord(series_id=series, label=label, patient_id=patient, source=source, layout=layout))
    return records


def _number(name: str) -> int:
    found = re.findall(r"\d+", Path(name).stem)
    if not found:
        raise ValueError(f"{name}: no number in the file name to order the slice by")
    return int(found[-1])


def discover_ccccii(root: Path | str) -> list[SeriesRecord]:
    """Records of a CC-CCII tree ``ROOT/<NCP|CP|Normal>/<PATIENT>/<SCAN>/<images>``."""
    root = Path(root)
    records = []
    for class_name, label in CCCCII_CLASSES.items():
        class_dir = root / class_name
        if not class_dir.is_dir():
            continue
        for patient in sorted(p for p in class_dir.iterdir() if p.is_dir()):
            for scan in sorted(s for s in patient.iterdir() if s.is_dir()):
                if any(f.suffix.lower() in _IMAGE_SUFFIXES for f in scan.iterdir()):
                    records.append(
                        SeriesRecord(
                            series_id=f"{class_name}/{patient.name}/{scan.name}",
                            label=label,
                            patient_id=f"{class_name}/{patient.name}",
                            source=scan,
                            layout="ccccii",
                        )
                    )
    if not records:
        raise ValueError(f"{root}: no CC-CCII scans (expected {'/'.join(CCCCII_CLASSES)}/<patient>/<scan>/<n>.png)")
    return records


def discover(data_dir: Path | str, labels_csv: Path | str | None = None) -> list[SeriesRecord]:
    """Records of any layout: a labels CSV (given, or DATA/labels.csv) means dicom/nifti, class
    folders NCP/CP/Normal mean CC-CCII."""
    data_dir = Path(data_dir)
    if labels_csv is not None or (data_dir / LABELS_CSV).is_file():
        return discover_labelled(data_dir, labels_csv)
    if any((data_dir / c).is_dir() for c in CCCCII_CLASSES):
        return discover_ccccii(data_dir)
    raise ValueError(f"{data_dir}: no {LABELS_CSV} and no CC-CCII class folders ({', '.join(CCCCII_CLASSES)})")


# -- reading volumes --------------------------------------------------------------------------------


def _synthetic_volume(hu: np.ndarray, spacing: tuple[float, float, float], key: str) -> Volume:
    """A Volume for a source without DICOM identity (NIfTI, image slices): UIDs derived from the
    key, axial geometry with the slices going feet -> head (true for NIfTI after reorientation;
    an assumption for image slices, whose direction is unknown)."""
    n, rows, cols = hu.shape
    positions = np.zeros((n, 3))
    positions[:, 2] = np.arange(n) * spacing[0]
    return Volume(
        hu=hu,
        spacing=spacing,
        sop_instance_uids=[derived_uid("dataset", key, "slice", str(k)) for k in range(n)],
        frame_numbers=[None] * n,
        source_files=[None] * n,
        image_positions=positions,
        orientation=np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        rows=rows,
        columns=cols,
        study_uid=derived_uid("dataset", key, "study"),
        series_uid=derived_uid("dataset", key, "series"),
        modality="CT",
        body_part="",
        slice_distances=np.full(max(0, n - 1), spacing[0]),
    )


def read_nifti(path: Path | str) -> Volume:
    """A NIfTI CT volume (HU, scaling applied) laid out like :class:`model.inference.io.Volume`."""
    path = Path(path)
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise SeriesReadError(f"{path} cannot be read as NIfTI: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SeriesReadError(f"{path} has {data.ndim} dimensions, a CT volume has 3")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    # Canonical axes go to the patient's Right, Anterior, Superior; Volume columns go to the
    # patient's left, rows to posterior, slices to superior.
    hu = np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0), dtype=np.float32)
    np.maximum(hu, np.float32(AIR_HU), out=hu)
    return _synthetic_volume(hu, (zooms[2], zooms[1], zooms[0]), str(path.resolve()))


def read_image_slices(
    folder: Path | str, window: tuple[float, float] = LUNG_WINDOW, spacing: tuple[float, float, float] = CCCCII_SPACING
) -> Volume:
    """A folder of 8-bit slice images (CC-CCII) ordered by the number in the file name, mapped to
    HU through the assumed ``window`` (0 -> window low, 255 -> window high)."""
    folder = Path(folder)
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise SeriesReadError(f"{folder}: no .png/.jpg slice images")
    try:
        files.sort(key=lambda f: _number(f.name))
    except ValueError as exc:
        raise SeriesReadError(str(exc)) from exc
    numbers = [_number(f.name) for f in files]
    if len(set(numbers)) != len(numbers):
        raise SeriesReadError(f"{folder}: two slice images share a number")
    low, high = window_bounds(window)
    slices = []
    for f in files:
        try:
            with Image.open(f) as im:
                slices.append(np.asarray(im.convert("L"), dtype=np.float32))
        except (OSError, UnidentifiedImageError) as exc:
            raise SeriesReadError(f"{f} cannot be read as an image: {exc}") from exc
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise SeriesReadError(f"{folder}: slice images differ in size ({sorted(shapes)})")
    hu = np.stack(slices) * np.float32((high - low) / 255.0) + np.float32(low)
    return _synthetic_volume(hu, spacing, str(folder.resolve()))


def load_volume(source: Volume | Path | str | Sequence[Path | str], layout: str | None = None) -> Volume:
    """A Volume from a DICOM folder/file list (:func:`model.inference.io.load_series`), a NIfTI file, a
    CC-CCII scan folder of slice images, or a Volume (returned as it is)."""
    if isinstance(source, Volume):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if layout == "nifti" or (layout is None and path.is_file() and _is_nifti(path)):
            return read_nifti(path)
        if layout == "ccccii" or (
            layout is None
            and path.is_dir()
            and any(f.suffix.lower() in _IMAGE_SUFFIXES for f in path.iterdir())
            and not _has_dicom(path)
        ):
            return read_image_slices(path)
    return load_series(source)


def _has_dicom(folder: Path) -> bool:
    return bool(scan_series(folder))


# -- evaluation -------------------------------------------------------------------------------------


@dataclass
class EvalSeries:
    """One labelled series to evaluate: where to read it, and its lesion mask if known."""

    series_id: str
    label: str
    patient_id: str
    source: Any  # a folder / file list for model.inference.io.load_series, or a model.inference.io.Volume
    lesion_mask: Any = None  # callable () -> bool array (slices, rows, columns) in sorted order, or None
    true_involvement_percent: float | None = None  # a phantom's lesion share of its lungs (its masks file)
    lung_mask: Any = None  # callable () -> the true lungs (a phantom's), like lesion_mask, or None
    meta: dict[str, Any] | None = None  # a phantom's description (its scan, findings, pattern), or None


def phantom_provenance(records: Sequence[Any]) -> dict[str, Any]:
    """For the metadata, from the masks file beside each phantom series (one read each): the
    phantoms' seeds and their series per mix (model.phantoms.mix) by name, "not recorded" for
    phantoms written before their description named it. Empty without phantoms."""
    metas = [m for m in (read_phantom_meta(r.source) for r in records if r.layout == "dicom") if m is not None]
    if not metas:
        return {}
    mixes: dict[str, int] = {}
    for m in metas:
        name = str(m.get("mix", {}).get("name", "not recorded"))
        mixes[name] = mixes.get(name, 0) + 1
    return {"phantom_seeds": sorted(int(m["seed"]) for m in metas), "phantom_mixes": dict(sorted(mixes.items()))}


def phantom_seeds(records: Sequence[Any]) -> list[int]:
    """Seeds of phantom series (from the masks file beside each folder), for the metadata."""
    return list(phantom_provenance(records).get("phantom_seeds", []))


def evaluation_items(data_dir: Path | str, labels_csv: Path | str | None = None) -> list[EvalSeries]:
    """:class:`EvalSeries` for every record of the data folder. ``source`` is the
    path (read it with :func:`load_volume`); ``lesion_mask`` loads a phantom's lesion mask when
    its masks file is beside the series folder, else None."""
    items = []
    for r in discover(data_dir, labels_csv):
        lesion, lungs, involvement = None, None, None
        meta = read_phantom_meta(r.source) if r.layout == "dicom" else None
        if meta is not None:
            lesion = _mask_loader(r.source, "lesion_mask")
            lungs = _mask_loader(r.source, "lung_mask")
            involvement = 100.0 * float(meta.get("lesion_fraction", 0.0))
        items.append(
            EvalSeries(
                series_id=r.series_id,
                label=r.label,
                patient_id=r.patient_id,
                source=r.source,
                lesion_mask=lesion,
                true_involvement_percent=involvement,
                lung_mask=lungs,
                meta=meta,
            )
        )
    return items


def _mask_loader(folder: Path, which: str) -> Callable[[], np.ndarray]:
    """Loads one mask (``lesion_mask`` or ``lung_mask``) of a phantom's truth when called."""

    def load() -> np.ndarray:
        return np.asarray(getattr(read_phantom_truth(folder), which), dtype=bool)

    return load


def lung_truth(record: SeriesRecord) -> np.ndarray:
    """The known lung mask of a series: the phantom masks file beside its folder."""
    source = Path(record.source)
    if not masks_path(source).is_file():
        raise ValueError(f"{record.series_id}: no lung mask beside the series ({masks_path(source).name})")
    return read_phantom_truth(source).lung_mask
