"""Lung segmentation: the classical offline method (method.md), measured on the phantoms.

Steps, at a working resolution of about 1.5 mm in-plane and 2.5 mm between slices (block means of
the HU volume; the result is interpolated back to the full grid):

1. air = HU below ``threshold`` (-320); per slice, air connected to the image border (outside the
   body, outside the reconstruction circle) is removed;
2. the trachea and main bronchi are found (a small round air region near the midline at the head
   end of the scan, grown along voxels below -950 HU, with a leak check that lowers the threshold)
   and removed;
3. 3D components: those that look like gas (median HU below -950: stomach, bowel) or are smaller
   than ``min_component_ml`` are dropped; the largest is kept with every other component of at
   least 10 % of its size (the other lung, or pieces of a lung cut apart by dense disease);
4. per kept component and per slice: morphological closing (a square of about ``closing_mm``) and
   hole filling, so vessels and dense lesions inside the lung (consolidation, nodules) are
   included, without bridging the two lungs across the mediastinum;
5. dense disease against the chest wall, which no threshold sees: per half of the body and per
   slice, the lung's convex hull is added where it lies lateral of the lung's medial edge in the
   same row (never heart or hilum) and has lung towards the feet in the same column (never the
   diaphragm dome; a consolidated apex has). Without the orientation, lung on both sides.

A volume without lungs gives an empty mask. Measured on the phantoms (tests/model/test_lung.py):
Dice >= 0.97 for covid, cap and normal; a consolidation that fills the whole lung base down to
the diaphragm is still partly missed (step 5 needs lung below it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image
from torch.nn import functional as F

from model.inference.lungnet import LungSegmenter

# Bumped whenever the masks change (invalidates the dataset slice caches).
LUNG_VERSION = 2
# Working resolution (mm) of the segmentation.
_WORK_XY_MM = 1.5
_WORK_Z_MM = 2.5
_AIRWAY_HU = -950.0  # airway lumen is below this; lung parenchyma (about -850) is above
_GAS_MEDIAN_HU = -950.0  # a component whose median is below this is gas, not lung
_MAX_AIRWAY_ML = 180.0  # trachea and main bronchi; more means the growing leaked
_KEEP_FRACTION = 0.1
_SLICE = np.array(
    [[[0, 0, 0], [0, 0, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]],
    dtype=bool,
)
_SLICE8 = np.zeros((3, 3, 3), dtype=bool)
_SLICE8[1] = True


def find_lungs(
    hu: np.ndarray,
    spacing: tuple[float, float, float] | list[float],
    *,
    superior_last: bool | None = None,
    segmenter: LungSegmenter | None = None,
) -> np.ndarray:
    """The lung mask of a series: the weights' learned lung network (model.inference.lungnet) when
    they have one, else the threshold method of :func:`segment_lungs` (weights without one)."""
    return find_lungs_with_doubt(hu, spacing, superior_last=superior_last, segmenter=segmenter)[0]


def find_lungs_with_doubt(
    hu: np.ndarray,
    spacing: tuple[float, float, float] | list[float],
    *,
    superior_last: bool | None = None,
    segmenter: LungSegmenter | None = None,
    doubt_below: float = 0.5,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`find_lungs` and the mask's doubtful dense voxels (the lung network's probability
    below ``doubt_below``: model.inference.lungnet.LungSegmenter.segment_with_doubt); None for the
    threshold method, or when ``doubt_below`` is 0.5."""
    if segmenter is not None:
        return segmenter.segment_with_doubt(
            hu, (float(spacing[0]), float(spacing[1]), float(spacing[2])), doubt_below=doubt_below
        )
    return np.asarray(segment_lungs(hu, spacing, superior_last=superior_last), dtype=np.bool_), None


def segment_lungs(
    hu: np.ndarray,
    spacing: tuple[float, float, float] | list[float],
    *,
    threshold: float = -320.0,
    superior_last: bool | None = None,
    closing_mm: float = 8.0,
    min_component_ml: float = 5.0,
    lateral_fill: bool = True,
) -> np.ndarray:
    """Boolean lung mask (slices, rows, columns) of a HU volume (see the module docstring).

    ``spacing``: (slice distance, row spacing, column spacing) in mm. ``superior_last``: True when
    the last slice is the head end (``model.inference.io.Volume.superior_last``), False for the opposite,
    None to look for the trachea at both ends.
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be (slices, rows, columns), got shape {hu.shape}")
    dz, dy, dx = (float(s) for s in spacing)
    if min(dz, dy, dx) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    n, rows, cols = hu.shape
    if hu.size == 0:
        return np.zeros(hu.shape, dtype=bool)
    fz = max(1, int(round(_WORK_Z_MM / dz)))
    fy = max(1, int(round(_WORK_XY_MM / dy)))
    fx = max(1, int(round(_WORK_XY_MM / dx)))
    coarse = _block_mean(hu, (fz, fy, fx))
    cspacing = (dz * fz, dy * fy, dx * fx)
    small = _segment_coarse(coarse, cspacing, threshold, superior_last, closing_mm, min_component_ml, lateral_fill)
    if not small.any():
        return np.zeros(hu.shape, dtype=bool)
    return _upsample_mask(small, (fz, fy, fx), hu.shape)


def _block_mean(hu: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean over blocks of ``factors`` voxels; the volume is padded with air to whole blocks."""
    fz, fy, fx = factors
    if factors == (1, 1, 1):
        return np.asarray(hu, dtype=np.float32)
    n, rows, cols = hu.shape
    pz, py, px = (-n) % fz, (-rows) % fy, (-cols) % fx
    x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
    if pz or py or px:
        x = F.pad(x[None], (0, px, 0, py, 0, pz), mode="constant", value=-1024.0)[0]
    with torch.no_grad():
        if fz == 1:
            out = F.avg_pool2d(x[:, None], (fy, fx))[:, 0]
        else:
            out = F.avg_pool3d(x[None, None], (fz, fy, fx))[0, 0]
    return out.numpy()


def _upsample_mask(small: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of the coarse mask back to the full grid (block centres line up), > 0.5."""
    fz, fy, fx = factors
    n, rows, cols = shape
    x = torch.from_numpy(small.astype(np.float32))
    with torch.no_grad():
        if fz > 1:
            nz = small.shape[0] * fz
            x = F.interpolate(
                x.permute(1, 2, 0).reshape(1, -1, small.shape[0]), size=nz, mode="linear", align_corners=False
            )
            x = x.reshape(small.shape[1], small.shape[2], nz).permute(2, 0, 1)
        x = x[:n]
        out = np.empty((n, rows, cols), dtype=bool)
        chunk = 32
        for start in range(0, n, chunk):
            part = x[start : start + chunk, None]
            if fy > 1 or fx > 1:
                part = F.interpolate(
                    part, size=(small.shape[1] * fy, small.shape[2] * fx), mode="bilinear", align_corners=False
                )
            out[start : start + chunk] = (part[:, 0, :rows, :cols] > 0.5).numpy()
    return out


def _segment_coarse(
    c: np.ndarray,
    spacing: tuple[float, float, float],
    threshold: float,
    superior_last: bool | None,
    closing_mm: float,
    min_ml: float,
    lateral_fill: bool,
) -> np.ndarray:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    air = c < threshold
    inside = _remove_border_air(air)
    if not inside.any():
        return np.zeros(c.shape, dtype=bool)
    airway = find_airways(c, inside, spacing, superior_last)
    if airway.any():
        # The airway was grown on smoothed HU, which shrinks it: take back its partial-volume rim
        # (two voxels of geodesic dilation through air) so no ring of it joins the lungs.
        grown = ndi.binary_dilation(airway, structure=np.ones((3, 3, 3), dtype=bool), iterations=2, mask=c < -500.0)
        inside &= ~grown
    labels, count = ndi.label(inside)
    if count == 0:
        return np.zeros(c.shape, dtype=bool)
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)
    sizes[0] = 0
    order = np.argsort(-sizes)
    kept: list[int] = []
    largest = 0
    for lab in order[: min(count, 12)]:
        size = int(sizes[lab])
        if size == 0 or size * voxel_ml < min_ml:
            break
        if largest and size < _KEEP_FRACTION * largest:
            break
        objects = ndi.find_objects((labels == lab).astype(np.int8))[0]
        if float(np.median(c[objects][labels[objects] == lab])) < _GAS_MEDIAN_HU:
            continue  # gas (stomach, bowel, a leaked airway), not aerated lung
        kept.append(int(lab))
        largest = largest or size
    out = np.zeros(c.shape, dtype=bool)
    for lab in kept:
        _close_and_fill(labels == lab, spacing, closing_mm, out)
    if lateral_fill and out.any():
        # Each half of the body separately (lungs merged at the anterior junction stay apart).
        body_cols = np.flatnonzero((c > -500.0).any(axis=(0, 1)))
        mid = int(round((body_cols[0] + body_cols[-1]) / 2.0)) if body_cols.size else c.shape[2] // 2
        out[:, :, :mid] = _lateral_hull(out[:, :, :mid], medial_is_right=True, superior_last=superior_last)
        out[:, :, mid:] = _lateral_hull(out[:, :, mid:], medial_is_right=False, superior_last=superior_last)
    return out


def _remove_border_air(air: np.ndarray) -> np.ndarray:
    """Air not connected, within its slice, to the image border."""
    labels, count = ndi.label(air, structure=_SLICE8)
    if count == 0:
        return air
    border = np.zeros(count + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = True
    return ~border[labels]


def _dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-slice dilation of (n, 1, h, w) {0, 1} by a square of half side ``radius`` pixels
    (separable; pixels beyond the edge count as 0)."""
    k = 2 * radius + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))


def _close_and_fill(mask: np.ndarray, spacing: tuple[float, float, float], closing_mm: float, out: np.ndarray) -> None:
    """Per-slice closing with a disk and hole filling of one component, OR-ed into ``out``."""
    box = ndi.find_objects(mask.astype(np.int8))[0]
    ry, rx = closing_mm / spacing[1], closing_mm / spacing[2]
    my, mx = int(math.ceil(ry)) + 1, int(math.ceil(rx)) + 1
    y0, y1 = max(0, box[1].start - my), min(mask.shape[1], box[1].stop + my)
    x0, x1 = max(0, box[2].start - mx), min(mask.shape[2], box[2].stop + mx)
    sub = mask[box[0], y0:y1, x0:x1]
    # A square of half side 0.8 r is between the disks of radius 0.8 r and 1.13 r.
    steps = int(round(0.8 * closing_mm / max(spacing[1], spacing[2])))
    if steps >= 1:
        with torch.no_grad():
            x = torch.from_numpy(sub.astype(np.float32))[:, None]
            closed = (1.0 - _dilate(1.0 - _dilate(x, steps), steps))[:, 0].numpy() > 0.5
        closed |= sub
    else:
        closed = sub
    filled = ndi.binary_fill_holes(closed, structure=_SLICE)
    out[box[0], y0:y1, x0:x1] |= filled


def _lateral_hull(mask: np.ndarray, medial_is_right: bool, superior_last: bool | None = None) -> np.ndarray:
    """Add dense disease against the chest wall, which no threshold sees: per slice, the part of the
    lung's convex hull that lies lateral of the lung's medial edge in the same row (never medial of
    it: heart, hilum) and that has lung towards the feet in the same column (never the diaphragm
    dome, which has none; a consolidated apex has). When the orientation is unknown
    (``superior_last`` None), lung on both sides in the column is required."""
    out = mask.copy()
    n = mask.shape[0]
    k_index = np.arange(n, dtype=np.int16)[:, None, None]
    first = np.where(mask, k_index, np.int16(n)).min(axis=0)
    last = np.where(mask, k_index, np.int16(-1)).max(axis=0)
    cols = np.arange(mask.shape[2])
    for k in range(n):
        sl = mask[k]
        if sl.sum() < 10:
            continue
        if superior_last is None:
            towards_feet = (first < k) & (last > k)
        else:
            towards_feet = (first < k) if superior_last else (last > k)
        candidates = towards_feet & ~sl
        if not candidates.any():
            continue
        rows_any = sl.any(axis=1)
        rows_with = np.flatnonzero(rows_any)
        cols_with = np.flatnonzero(sl.any(axis=0))
        r0, r1, c0, c1 = rows_with[0], rows_with[-1] + 1, cols_with[0], cols_with[-1] + 1
        hull = np.zeros_like(sl)
        hull[r0:r1, c0:c1] = convex_hull_image(sl[r0:r1, c0:c1])
        rows_mask = sl[rows_with]
        if medial_is_right:  # lung in the image's left half: its medial edge is its largest column
            edge = sl.shape[1] - 1 - np.argmax(np.ascontiguousarray(rows_mask[:, ::-1]), axis=1)
        else:
            edge = np.argmax(rows_mask, axis=1)
        limit = np.interp(np.arange(sl.shape[0]), rows_with, edge.astype(np.float64))
        lateral = cols[None, :] <= limit[:, None] if medial_is_right else cols[None, :] >= limit[:, None]
        out[k] |= hull & lateral & candidates
    return out


# -- airways ----------------------------------------------------------------------------------------


def find_airways(
    c: np.ndarray, inside: np.ndarray, spacing: tuple[float, float, float], superior_last: bool | None = None
) -> np.ndarray:
    """Trachea and main bronchi (bool, same grid as ``c``): seeded in the trachea at the head end,
    grown through ``inside`` voxels darker than the airway threshold; empty when no trachea is
    found. The threshold drops in steps while the grown volume is implausibly large (leak into
    emphysema or the lung)."""
    smooth = ndi.uniform_filter(c, size=(1, 3, 3))
    ends = [True, False] if superior_last is None else [superior_last]
    best: tuple[float, np.ndarray] | None = None
    for last in ends:
        seed = _trachea_seed(smooth, inside, spacing, last)
        if seed is not None and (best is None or seed[0] > best[0]):
            best = seed
    if best is None:
        return np.zeros(c.shape, dtype=bool)
    seed_mask = best[1]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for t in (_AIRWAY_HU, _AIRWAY_HU - 15.0, _AIRWAY_HU - 30.0, _AIRWAY_HU - 40.0):
        candidate = inside & (smooth < t)
        candidate |= seed_mask
        labels, _ = ndi.label(candidate)
        ids = np.unique(labels[seed_mask])
        ids = ids[ids > 0]
        grown = np.isin(labels, ids)
        if grown.sum() * voxel_ml <= _MAX_AIRWAY_ML:
            return grown
    return seed_mask


def _trachea_seed(
    smooth: np.ndarray, inside: np.ndarray, spacing: tuple[float, float, float], superior_last: bool
) -> tuple[float, np.ndarray] | None:
    """(score, mask of the trachea's 2D components in the top slices) or None.

    Looks at the slices within 40 mm of the head end for a round air region of 0.6-8 cm2 near the
    body's left-right centre with mean HU below the airway threshold."""
    n = smooth.shape[0]
    depth = max(1, int(round(40.0 / spacing[0])))
    order = range(n - 1, max(-1, n - 1 - depth), -1) if superior_last else range(0, min(n, depth))
    pixel_cm2 = spacing[1] * spacing[2] / 100.0
    seed = np.zeros(smooth.shape, dtype=bool)
    found = 0
    score = 0.0
    for k in order:
        body = smooth[k] > -500.0
        if not body.any():
            continue
        cols = np.flatnonzero(body.any(axis=0))
        mid = (cols[0] + cols[-1]) / 2.0
        half_width = max(1.0, (cols[-1] - cols[0]) / 2.0)
        labels, count = ndi.label(inside[k] & (smooth[k] < _AIRWAY_HU + 50.0))
        if count == 0:
            continue
        best = None
        for lab, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None:
                continue
            comp = labels[sl] == lab
            area = comp.sum() * pixel_cm2
            if not 0.6 <= area <= 8.0:
                continue
            h, w = comp.shape
            roundness = comp.sum() / float(h * w)
            cy, cx = np.argwhere(comp).mean(axis=0) + (sl[0].start, sl[1].start)
            offset = abs(cx - mid) / half_width
            mean_hu = float(smooth[k][sl][comp].mean())
            if roundness < 0.5 or offset > 0.2 or mean_hu > _AIRWAY_HU + 30.0:
                continue
            s = 1.0 - offset
            if best is None or s > best[0]:
                best = (s, lab)
        if best is not None:
            seed[k] = labels == best[1]
            found += 1
            score += best[0]
    if found == 0:
        return None
    return score, seed
