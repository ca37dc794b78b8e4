"""Inputs of the output-writer tests: a phantom chest CT written by model.phantoms (single-frame CT
Image Storage files, or one Enhanced CT instance), and SeriesResults made by hand (two blobs of
"infection" in the heatmap, one per lung, with their region labels).

The writers are the unit under test; the model is beside it, so nothing here runs the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import apply_rescale

from model.contract.result import ModelInfo, Region, SeriesResult
from model.phantoms.phantom import Phantom, make_phantom
from model.phantoms.writer import write_phantom_series

MODEL = ModelInfo(name="covidnet-ws", version="1.2.0", weights_sha256="ab" * 32)


@dataclass
class Series:
    """A written series in the sorted slice order of the writers (ascending z)."""

    paths: list[Path]  # the files (one for a multi-frame series)
    hu: np.ndarray  # float32 (slices, rows, columns) as read back
    sop_instance_uids: list[str]  # per slice
    frame_numbers: list[int | None]  # per slice; None for single-frame
    lung_mask: np.ndarray
    voxel_ml: float


def make_test_phantom(*, slices: int = 24, size: int = 128) -> Phantom:
    return make_phantom("covid", seed=3, slices=slices, rows=size, columns=size)


def write_series(phantom: Phantom, directory: Path, *, multiframe: bool = False) -> Series:
    """Write the phantom and read back what the writers need. Instance (or frame) numbers run
    against the slice order, so nothing may sort by them."""
    write_phantom_series(
        phantom,
        directory,
        multiframe=multiframe,
        reverse_instance_numbers=True,
        shuffle_file_names=False,
        write_masks=False,
    )
    paths = sorted(directory.glob("*.dcm"))
    dz, dy, dx = phantom.spacing
    voxel_ml = dz * dy * dx / 1000.0
    if multiframe:
        (path,) = paths
        ds = pydicom.dcmread(path)
        z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
        order = [int(i) for i in np.argsort(z)]
        hu = apply_rescale(ds.pixel_array, ds).astype(np.float32)[order]
        return Series(
            paths, hu, [str(ds.SOPInstanceUID)] * len(order), [i + 1 for i in order], phantom.lung_mask, voxel_ml
        )
    datasets = sorted((pydicom.dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([apply_rescale(ds.pixel_array, ds) for ds in datasets]).astype(np.float32)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    return Series(paths, hu, uids, [None] * len(uids), phantom.lung_mask, voxel_ml)


def _lung_centre(lungs: np.ndarray, z: int, right_half: bool) -> tuple[float, float]:
    """(y, x) centroid of the lung voxels of slice z in the left or right image half."""
    half = lungs[z].copy()
    cols = half.shape[1]
    if right_half:
        half[:, : cols // 2] = False
    else:
        half[:, cols // 2 :] = False
    y, x = np.nonzero(half)
    return float(y.mean()), float(x.mean())


def blob_result(series: Series, *, decision: str = "covid") -> SeriesResult:
    """Two Gaussian blobs in the heatmap, one per lung, restricted to the lungs; their region
    labels (heatmap >= 0.5); key slices at the blob peaks, strongest first."""
    lungs = series.lung_mask
    slices, rows, cols = lungs.shape
    lung_z = np.flatnonzero(lungs.any(axis=(1, 2)))
    zz, yy, xx = np.mgrid[0:slices, 0:rows, 0:cols].astype(np.float32)
    blobs = []
    for fraction, right_half, amplitude in ((0.4, False, 1.0), (0.65, True, 0.8)):
        z = int(lung_z[int(fraction * (len(lung_z) - 1))])
        y, x = _lung_centre(lungs, z, right_half)
        blobs.append((z, y, x, amplitude, right_half))
    heat = np.zeros(lungs.shape, dtype=np.float32)
    for cz, cy, cx, amplitude, _ in blobs:
        r2 = ((zz - cz) / 2.0) ** 2 + ((yy - cy) / (rows * 0.07)) ** 2 + ((xx - cx) / (cols * 0.05)) ** 2
        heat = np.maximum(heat, amplitude * np.exp(-r2))
    heat[~lungs] = 0.0
    labels = np.zeros(lungs.shape, dtype=np.uint16)
    regions = []
    for index, (_cz, _cy, _cx, _amplitude, right_half) in enumerate(blobs, start=1):
        side = (xx >= cols / 2) if right_half else (xx < cols / 2)
        component = (heat >= 0.5) & side
        labels[component] = index
        z_idx, y_idx, x_idx = np.nonzero(component)
        values = heat[component]
        peak = int(np.argmax(values))
        regions.append(
            Region(
                index=index,
                slice_range=(int(z_idx.min()), int(z_idx.max())),
                bbox=(
                    int(z_idx.min()),
                    int(y_idx.min()),
                    int(x_idx.min()),
                    int(z_idx.max()),
                    int(y_idx.max()),
                    int(x_idx.max()),
                ),
                volume_ml=float(component.sum() * series.voxel_ml),
                mean_score=float(values.mean()),
                max_score=float(values.max()),
                peak=(int(z_idx[peak]), int(y_idx[peak]), int(x_idx[peak])),
            )
        )
    probabilities = {"covid": 0.82, "cap": 0.12, "normal": 0.06}
    if decision == "cap":
        probabilities = {"covid": 0.2, "cap": 0.7, "normal": 0.1}
    return SeriesResult(
        probabilities=probabilities,
        decision=decision,
        reason="highest class probability above the decision threshold",
        model=MODEL,
        regions=regions,
        lung_involvement_percent=float(100.0 * (labels > 0).sum() / max(1, lungs.sum())),
        sop_instance_uids=list(series.sop_instance_uids),
        key_slices=[r.peak[0] for r in regions],
        lung_slices=[bool(lungs[z].any()) for z in range(slices)],
        heatmap=heat,
        region_labels=labels,
        lung_mask=lungs,
    )


def normal_result(series: Series) -> SeriesResult:
    """A confident "normal" result: no regions, a faint heatmap everywhere in the lungs."""
    lungs = series.lung_mask
    return SeriesResult(
        probabilities={"covid": 0.03, "cap": 0.05, "normal": 0.92},
        decision="normal",
        reason="highest class probability above the decision threshold",
        model=MODEL,
        regions=[],
        lung_involvement_percent=0.0,
        sop_instance_uids=list(series.sop_instance_uids),
        key_slices=[],
        lung_slices=[bool(lungs[z].any()) for z in range(lungs.shape[0])],
        heatmap=np.where(lungs, 0.05, 0.0).astype(np.float32),
        region_labels=np.zeros(lungs.shape, dtype=np.uint16),
        lung_mask=lungs,
    )


def indeterminate_result(series: Series) -> SeriesResult:
    """A low-confidence result: the two likeliest classes too close to call; no regions."""
    return dataclasses.replace(
        normal_result(series),
        probabilities={"covid": 0.40, "cap": 0.36, "normal": 0.24},
        decision="indeterminate",
        reason="indeterminate, low confidence: p(covid)=0.400 against p(cap)=0.360, a margin of 0.040 below the "
        "0.100 chosen on validation data",
    )


def no_decision_result(series: Series) -> SeriesResult:
    """What the model returns when it cannot decide (here: too few lung slices)."""
    return SeriesResult(
        probabilities={"covid": 1 / 3, "cap": 1 / 3, "normal": 1 / 3},
        decision="no_decision",
        reason="only 3 slices contain lung; at least 10 are needed",
        model=MODEL,
        sop_instance_uids=list(series.sop_instance_uids),
    )


# A phantom whose disease is clear: its lesions take at least this share of the lungs. Tests that
# follow a finding through the node need one; mild disease is the model's to measure (model
# evaluate), not theirs to stumble on.
CLEAR_LESION_FRACTION = 0.02


def clear_phantom(
    kind: str,
    folder: Path,
    seed: int,
    *,
    slices: int,
    rows: int,
    slice_spacing: float | None = None,
    **writer_options: Any,
) -> Path:
    """Write a ``kind`` phantom series for ``seed`` or, when its lesions take less than
    CLEAR_LESION_FRACTION of the lungs, for the first of seed + 1000, seed + 2000, ... whose do
    (deterministic). A normal phantom is written as it is. ``slice_spacing`` (mm): the slices that
    far apart, centred on the lungs; None: ``slices`` over the whole scan range."""
    for attempt in range(50):
        phantom = make_phantom(
            kind, seed=seed + 1000 * attempt, slices=slices, rows=rows, columns=rows, slice_spacing=slice_spacing
        )
        if kind == "normal" or phantom.lesion_fraction >= CLEAR_LESION_FRACTION:
            return write_phantom_series(phantom, folder, **writer_options)
    raise AssertionError(
        f"no {kind} phantom with lesions over {CLEAR_LESION_FRACTION:.0%} of the lungs from seed {seed}"
    )
