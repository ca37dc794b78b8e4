"""Training and evaluation data from three folder layouts, with a cache of pre-processed slices.

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

:func:`prepare_dataset` turns records into :class:`CachedSeries`: per series the label, patient
and the pre-processed lung slices (n, 1, S, S) float32, exactly as inference computes them
(:mod:`model.inference.lung`, :mod:`model.inference.preprocess`), cached as .npy under a cache folder keyed by the
source files, the size and the pre-processing version, so training does not re-read DICOM.

Writers of small NIfTI and CC-CCII replicas from phantoms are here too (tests, docs).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

from model.contract.result import CLASSES
from model.contract.uids import derived_uid
from model.inference import lung
from model.inference.io import AIR_HU, SeriesReadError, Volume, load_series, scan_series
from model.inference.lung import segment_lungs
from model.inference.preprocess import (
    LUNG_WINDOW,
    PAPER_INPUT,
    PREPROCESS_VERSION,
    InputSpec,
    lung_slice_indices,
    prepare_lung_slices,
    window_bounds,
)
from model.phantoms.phantom import KINDS, make_phantom
from model.phantoms.writer import read_phantom_meta, read_phantom_truth

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("dicom", "nifti", "ccccii")
LABELS_CSV = "labels.csv"
# Bumped when the cached content changes for a reason other than model.inference.preprocess (lung masks).
CACHE_VERSION = 2
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


def phantom_seeds(records: Sequence[Any]) -> list[int]:
    """Seeds of phantom series (from the masks file beside each folder), for the metadata."""
    metas = [read_phantom_meta(r.source) for r in records if r.layout == "dicom"]
    return sorted(int(m["seed"]) for m in metas if m is not None)


def evaluation_items(data_dir: Path | str, labels_csv: Path | str | None = None) -> list[EvalSeries]:
    """:class:`EvalSeries` for every record of the data folder. ``source`` is the
    path (read it with :func:`load_volume`); ``lesion_mask`` loads a phantom's lesion mask when
    its masks file is beside the series folder, else None."""
    items = []
    for r in discover(data_dir, labels_csv):
        lesion, involvement = None, None
        meta = read_phantom_meta(r.source) if r.layout == "dicom" else None
        if meta is not None:
            lesion = _lesion_loader(r.source, read_phantom_truth)
            involvement = 100.0 * float(meta.get("lesion_fraction", 0.0))
        items.append(
            EvalSeries(
                series_id=r.series_id,
                label=r.label,
                patient_id=r.patient_id,
                source=r.source,
                lesion_mask=lesion,
                true_involvement_percent=involvement,
            )
        )
    return items


def _lesion_loader(folder: Path, reader: Callable[[Path], Any]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return np.asarray(reader(folder).lesion_mask, dtype=bool)

    return load


# -- the slice cache --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedSeries:
    """A series ready for training (``model.training.train.SeriesSlices``): label, patient and the
    pre-processed lung slices, memory-mapped from the cache."""

    series_id: str
    label: str
    patient_id: str
    path: Path  # the .npy of (n, 1, S, S) float32
    lung_indices: tuple[int, ...]  # which sorted slices these are
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def slices(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    @property
    def count(self) -> int:
        return len(self.lung_indices)


@dataclass
class PreparedDataset:
    """The cached series, and the records that could not be used with the reason."""

    series: list[CachedSeries]
    skipped: list[tuple[SeriesRecord, str]] = field(default_factory=list)


def _signature(source: Path) -> list[Any]:
    if source.is_file():
        st = source.stat()
        return [source.name, st.st_size, st.st_mtime_ns]
    out: list[Any] = []
    for f in sorted(p for p in source.rglob("*") if p.is_file()):
        st = f.stat()
        out.append([str(f.relative_to(source)), st.st_size, st.st_mtime_ns])
    return out


def cache_key(record: SeriesRecord, spec: InputSpec, min_fraction: float) -> str:
    """Hash of the source files (names, sizes, times), the layout and the pre-processing."""
    payload = {
        "source": str(record.source.resolve()),
        "layout": record.layout,
        "files": _signature(record.source),
        "input": spec.to_json(),
        "min_fraction": min_fraction,
        "preprocess": PREPROCESS_VERSION,
        "lung": lung.LUNG_VERSION,
        "cache": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def prepare_series(
    record: SeriesRecord, cache_dir: Path | str, *, spec: InputSpec = PAPER_INPUT, min_fraction: float = 0.05
) -> CachedSeries:
    """Read, segment, select and pre-process one series (or take it from the cache).

    Raises :class:`model.inference.io.SeriesReadError` for unreadable input and ValueError for a series
    without lung slices. A CC-CCII scan without a lung mask keeps all its slices (its images may
    already be cropped to the lungs).
    """
    cache_dir = Path(cache_dir)
    key = cache_key(record, spec, min_fraction)
    npy, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return CachedSeries(record.series_id, record.label, record.patient_id, npy, tuple(meta["lung_indices"]), meta)
    volume = load_volume(record.source, record.layout)
    # Image slices (CC-CCII) have no known direction: look for the trachea at both ends.
    superior_last = None if record.layout == "ccccii" else volume.superior_last
    mask = segment_lungs(volume.hu, volume.spacing, superior_last=superior_last)
    indices = lung_slice_indices(mask, min_fraction)
    fallback = False
    if indices.size == 0:
        if record.layout != "ccccii":
            raise ValueError(f"{record.series_id}: no lung slices found")
        indices = np.arange(volume.hu.shape[0])
        fallback = True
    # The same path as inference (model.inference.multiscale_cam): crop, fill and normalisation as
    # the spec says. Without lungs (the CC-CCII fallback) the mask is empty and the whole slice is kept.
    lungs = np.zeros_like(mask) if fallback else mask
    slices = prepare_lung_slices(
        volume.hu, lungs, spec, (float(volume.spacing[1]), float(volume.spacing[2])), indices
    ).inputs
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_suffix(".tmp.npy")
    np.save(tmp, slices)
    tmp.replace(npy)
    meta = {
        "series_id": record.series_id,
        "label": record.label,
        "patient_id": record.patient_id,
        "source": str(record.source),
        "layout": record.layout,
        "shape": list(volume.hu.shape),
        "spacing": list(volume.spacing),
        "lung_indices": [int(i) for i in indices],
        "lung_ml": float(mask.sum()) * float(np.prod(volume.spacing)) / 1000.0,
        "all_slices_fallback": fallback,
        "input": spec.to_json(),
    }
    meta_path.write_text(json.dumps(meta))
    return CachedSeries(record.series_id, record.label, record.patient_id, npy, tuple(meta["lung_indices"]), meta)


def prepare_dataset(
    data: Path | str | Sequence[SeriesRecord],
    cache_dir: Path | str,
    *,
    labels_csv: Path | str | None = None,
    spec: InputSpec = PAPER_INPUT,
    min_fraction: float = 0.05,
    skip_unreadable: bool = True,
    progress: Callable[[int, int, SeriesRecord], None] | None = None,
) -> PreparedDataset:
    """:func:`prepare_series` for every record (a data folder is discovered first). Series that
    cannot be read or have no lungs are skipped with their reason (or raise, with
    ``skip_unreadable=False``)."""
    records = discover(data, labels_csv) if isinstance(data, (str, Path)) else list(data)
    out = PreparedDataset(series=[])
    for i, record in enumerate(records):
        try:
            out.series.append(prepare_series(record, cache_dir, spec=spec, min_fraction=min_fraction))
        except (SeriesReadError, ValueError) as exc:
            if not skip_unreadable:
                raise
            log.warning("skipping %s: %s", record.series_id, exc)
            out.skipped.append((record, str(exc)))
        if progress is not None:
            progress(i + 1, len(records), record)
    return out


# -- replicas of the public layouts, from phantoms --------------------------------------------------


def write_nifti_replica(out_dir: Path | str, count: int, *, seed: int = 0, rows: int = 128, slices: int = 32) -> Path:
    """``count`` phantoms as .nii.gz (int16 HU) + labels.csv; half stored with the DICOM-like
    (LPS) array order and a flipped affine, half already canonical (RAS), so readers must use the
    affine. Returns labels.csv."""

    out = Path(out_dir)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    rows_out = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        p = make_phantom(kind, seed=seed * 1000 + i, rows=rows, columns=rows, slices=slices)
        dz, dy, dx = p.spacing
        x0, y0, z0 = p.image_positions[0]
        hu = np.rint(p.hu).astype(np.int16)
        if i % 2 == 0:  # array (columns, rows, slices) as stored by DICOM converters
            data = hu.transpose(2, 1, 0)
            affine = np.array([[-dx, 0, 0, -x0], [0, -dy, 0, -y0], [0, 0, dz, z0], [0, 0, 0, 1]], dtype=np.float64)
        else:  # canonical RAS: first axis to the right, second to anterior
            data = hu[:, ::-1, ::-1].transpose(2, 1, 0)
            n_r, n_c = hu.shape[1], hu.shape[2]
            affine = np.array(
                [[dx, 0, 0, -(x0 + dx * (n_c - 1))], [0, dy, 0, -(y0 + dy * (n_r - 1))], [0, 0, dz, z0], [0, 0, 0, 1]],
                dtype=np.float64,
            )
        name = f"volumes/study_{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(out / name))
        rows_out.append((name, kind, f"NIFTI-{seed}-{i:04d}"))
    labels = out / LABELS_CSV
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["series", "label", "patient_id"])
        w.writerows(rows_out)
    return labels


def write_ccccii_replica(out_dir: Path | str, count: int, *, seed: int = 0, rows: int = 128, slices: int = 32) -> Path:
    """``count`` phantoms as CC-CCII ``<NCP|CP|Normal>/<patient>/<scan>/<n>.png|jpg`` (8-bit, lung
    window W1500/L-600). File numbers are unpadded (so 10 sorts after 9 only numerically) and
    descend head -> feet in every other scan; JPEG for every third scan. Returns ``out_dir``."""

    names = {v: k for k, v in CCCCII_CLASSES.items()}
    out = Path(out_dir)
    low, high = window_bounds(LUNG_WINDOW)
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        p = make_phantom(kind, seed=seed * 1000 + i, rows=rows, columns=rows, slices=slices)
        scan = out / names[kind] / str(100 + i) / str(3000 + i)
        scan.mkdir(parents=True, exist_ok=True)
        img = np.rint((np.clip(p.hu, low, high) - low) / (high - low) * 255.0).astype(np.uint8)
        order = range(p.shape[0] - 1, -1, -1) if i % 2 else range(p.shape[0])
        ext = ".jpg" if i % 3 == 2 else ".png"
        for number, k in enumerate(order):
            picture = Image.fromarray(img[k])
            if ext == ".jpg":
                picture.save(scan / f"{number}{ext}", quality=95)
            else:
                picture.save(scan / f"{number}{ext}")
    return out
