"""The slice cache of training: each series read, its lungs found, its slices prepared for the
network once (model.inference.preprocess), and kept as .npy with a JSON description, keyed by the
source files, the input spec, the lung method and the code versions that shape them."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from model.inference import lung
from model.inference.io import SeriesReadError
from model.inference.lung import find_lungs
from model.inference.lungnet import LungSegmenter
from model.inference.preprocess import (
    PAPER_INPUT,
    PREPROCESS_VERSION,
    InputSpec,
    lung_slice_indices,
    prepare_lung_slices,
)
from model.training.datasets import SeriesRecord, discover, load_volume, lung_truth

log = logging.getLogger(__name__)

# ``lungs_id`` of a series prepared with its known lungs (a phantom's masks file) instead of a method.
TRUE_LUNGS = "truth"
# Bumped whenever what a cache entry holds changes.
CACHE_VERSION = 2


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


def cache_key(record: SeriesRecord, spec: InputSpec, min_fraction: float, lungs: str = "threshold") -> str:
    """Hash of the source files (names, sizes, times), the layout, the pre-processing and the lung
    method (``lungs``: "threshold" or the lung network's sha256)."""
    payload = {
        "lungs": lungs,
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
    record: SeriesRecord,
    cache_dir: Path | str,
    *,
    spec: InputSpec = PAPER_INPUT,
    min_fraction: float = 0.05,
    lungs: LungSegmenter | None = None,
    lungs_id: str = "threshold",
) -> CachedSeries:
    """Read, segment, select and pre-process one series (or take it from the cache).

    Raises :class:`model.inference.io.SeriesReadError` for unreadable input and ValueError for a series
    without lung slices. A CC-CCII scan without a lung mask keeps all its slices (its images may
    already be cropped to the lungs).
    """
    cache_dir = Path(cache_dir)
    key = cache_key(record, spec, min_fraction, lungs_id)
    npy, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return CachedSeries(record.series_id, record.label, record.patient_id, npy, tuple(meta["lung_indices"]), meta)
    volume = load_volume(record.source, record.layout)
    # Image slices (CC-CCII) have no known direction: look for the trachea at both ends.
    superior_last = None if record.layout == "ccccii" else volume.superior_last
    if lungs_id == TRUE_LUNGS:
        mask = lung_truth(record)
        if mask.shape != volume.hu.shape:
            raise ValueError(f"{record.series_id}: lung mask {mask.shape} does not match the series {volume.hu.shape}")
    else:
        mask = find_lungs(volume.hu, volume.spacing, superior_last=superior_last, segmenter=lungs)
    indices = lung_slice_indices(mask, min_fraction)
    fallback = False
    if indices.size == 0:
        if record.layout != "ccccii":
            raise ValueError(f"{record.series_id}: no lung slices found")
        indices = np.arange(volume.hu.shape[0])
        fallback = True
    # The same path as inference (model.inference.multiscale_cam): crop, fill and normalisation as
    # the spec says. Without lungs (the CC-CCII fallback) the mask is empty and the whole slice is kept.
    known = np.zeros_like(mask) if fallback else mask
    prepared = prepare_lung_slices(
        volume.hu, known, spec, (float(volume.spacing[1]), float(volume.spacing[2])), indices, float(volume.spacing[0])
    )
    slices, indices = prepared.inputs, prepared.indices
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
