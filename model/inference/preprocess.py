"""The method's slice pre-processing, one code path for training and inference.

HU slices -> clip to the lung window (W1500/L-600, i.e. -1350..150 HU) -> pad to a square with the
window minimum (keeps the aspect ratio of non-square matrices; a no-op for 512x512) -> bilinear
resize to ``size`` x ``size`` (antialiased when shrinking) -> [with a lung mask: every pixel more
than LUNG_MARGIN network pixels from the lungs set to the window minimum] -> per-slice z-score
((x - mean) / std, as the authors' code does). One channel. No histogram matching (method.md:
shortcut risk).

Masking (ours, "lung segmentation first" read as: the network sees the lungs): the heart, the
chest wall, the table and the abdomen are not what is classified, and with global max pooling any
bright structure outside the lungs competes with the lesions for the maximum. Weights record it in
their input spec (``outside_lungs``); weights without it get whole slices.

:func:`to_original_geometry` is the inverse geometry (maps at the network size back to the
series' rows x columns), for heatmaps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

# (level, width) in HU: the radiologist's lung window.
LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)
# Bumped whenever the output of preprocess_slices changes (invalidates dataset caches).
PREPROCESS_VERSION = 2
# Lung mask dilation (network pixels) before masking: keeps pleural-based lesions and the mask's
# edge errors in view.
LUNG_MARGIN = 2
# A slice whose clipped std is below this (HU) is uniform: its z-score is all zeros.
_MIN_STD_HU = 1e-3
_CHUNK = 64


def window_bounds(window: tuple[float, float] = LUNG_WINDOW) -> tuple[float, float]:
    """(low, high) HU of a (level, width) window."""
    level, width = window
    return level - width / 2.0, level + width / 2.0


def lung_slice_indices(lung_mask: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """Indices (ascending) of the slices that contain lung.

    A slice counts when its lung area is at least ``min_fraction`` of the largest lung area of any
    slice (relative, so it does not depend on the field of view) and at least one pixel. Returns an
    empty array for a mask without lung.
    """
    if lung_mask.ndim != 3:
        raise ValueError(f"lung_mask must be (slices, rows, columns), got shape {lung_mask.shape}")
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    area = np.count_nonzero(lung_mask.reshape(lung_mask.shape[0], -1), axis=1)
    peak = int(area.max()) if area.size else 0
    if peak == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(area >= max(1.0, min_fraction * peak)).astype(np.int64)


def _square_pad(rows: int, columns: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that centres a rows x columns image in a square."""
    side = max(rows, columns)
    top = (side - rows) // 2
    left = (side - columns) // 2
    return top, side - rows - top, left, side - columns - left


def preprocess_slices(hu: np.ndarray, size: int = 224, window: tuple[float, float] = LUNG_WINDOW, lung_mask: np.ndarray | None = None) -> np.ndarray:
    """HU slices (n, rows, columns) -> network input (n, 1, size, size) float32 (module docstring).

    ``lung_mask`` (n, rows, columns), the lungs of the same slices: mask outside them.
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be (slices, rows, columns), got shape {hu.shape}")
    if lung_mask is not None and lung_mask.shape != hu.shape:
        raise ValueError(f"lung_mask shape {lung_mask.shape} differs from the slices' {hu.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    n, rows, columns = hu.shape
    out = np.empty((n, 1, size, size), dtype=np.float32)
    low, high = window_bounds(window)
    top, bottom, left, right = _square_pad(rows, columns)
    shrink = max(rows, columns) > size
    with torch.no_grad():
        for start in range(0, n, _CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(hu[start : start + _CHUNK], dtype=np.float32))
            x = x.clamp(low, high).unsqueeze(1)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom), value=low)
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
            if lung_mask is not None:
                m = torch.from_numpy(mask_to_network_geometry(lung_mask[start : start + _CHUNK], size)).unsqueeze(1).float()
                if LUNG_MARGIN:
                    m = F.max_pool2d(m, 2 * LUNG_MARGIN + 1, stride=1, padding=LUNG_MARGIN)
                x = torch.where(m > 0, x, torch.full_like(x, low))
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
            x = torch.where(std > _MIN_STD_HU, (x - mean) / std.clamp_min(_MIN_STD_HU), torch.zeros_like(x))
            out[start : start + x.shape[0]] = x.numpy()
    return out


def to_original_geometry(maps: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Maps at the network size (n, S, S) -> (n, rows, columns): the inverse of the resize and the
    square padding of :func:`preprocess_slices` (bilinear)."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, S, S), got shape {maps.shape}")
    side = max(rows, columns)
    top, _, left, _ = _square_pad(rows, columns)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
        if x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return x[:, 0, top : top + rows, left : left + columns].numpy().copy()


def mask_to_network_geometry(mask: np.ndarray, size: int) -> np.ndarray:
    """Masks (n, rows, columns) -> (n, size, size) bool in the geometry of :func:`preprocess_slices`
    (same square padding, area resize; a pixel is set where any of its area is set)."""
    if mask.ndim != 3:
        raise ValueError(f"mask must be (n, rows, columns), got shape {mask.shape}")
    rows, columns = mask.shape[1:]
    top, bottom, left, right = _square_pad(rows, columns)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).unsqueeze(1)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=0.0)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] >= size else "nearest")
        return (x[:, 0] > 0).numpy()
