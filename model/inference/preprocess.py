"""Slice pre-processing: one code path for training and inference, described by an :class:`InputSpec`
that every set of weights records in its metadata (``input``).

HU slices -> clip to the lung window (W1500/L-600, i.e. -1350..150 HU) -> the region the network
sees (:class:`SliceGeometry`) -> resize to ``height`` x ``width`` (area-antialiased when shrinking)
-> what lies outside the lungs -> normalisation. One channel.

Two recipes are spelled by the spec:

- the paper's (``crop="none"``, ``outside_lungs="keep"``, ``normalisation="zscore"``): the whole
  slice padded to a square and resized, per-slice z-score, as the authors' code does;
- ours, for the shipped weights (``crop="lungs"``, ``outside_lungs="lung_median"``,
  ``normalisation="window"``): the box around both lungs over the whole series (plus a margin in
  mm) is cropped and resized, so the lungs fill the input and a ground-glass patch covers several
  network pixels instead of a few faint ones; every network pixel that is less than half lung is
  set to the median HU of that slice's lungs, so the heart, the chest wall and the table carry no
  signal and, unlike a fill with the window minimum, the lung border draws no bright ring that the
  max-pooled CAMs latch onto; the window is mapped linearly to [-1, 1], so the brightness of a
  lesion does not depend on how much of the slice it takes (a z-score would rescale a slice with a
  large consolidation). What we measured that led there is in model/README.md.

No histogram matching (a shortcut risk: scanners differ, diseases should not). The geometry maps
network-sized maps back to the series' rows x columns (:meth:`SliceGeometry.to_original`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

# (level, width) in HU: the radiologist's lung window.
LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)
# Bumped whenever the output of prepare_slices changes for a given spec (invalidates dataset caches).
PREPROCESS_VERSION = 3
# Legacy masking (weights that say outside_lungs "window_min"): dilation in network pixels.
LEGACY_LUNG_MARGIN = 2
CROPS: tuple[str, ...] = ("none", "lungs")
OUTSIDE_LUNGS: tuple[str, ...] = ("keep", "window_min", "lung_median")
NORMALISATIONS: tuple[str, ...] = ("zscore", "window")
# A slice whose clipped std is below this (HU) is uniform: its z-score is all zeros.
_MIN_STD_HU = 1e-3
_CHUNK = 64
# The network halves its input five times (model.inference.network).
_STRIDE = 32


def window_bounds(window: tuple[float, float] = LUNG_WINDOW) -> tuple[float, float]:
    """(low, high) HU of a (level, width) window."""
    level, width = window
    return level - width / 2.0, level + width / 2.0


@dataclass(frozen=True)
class InputSpec:
    """What the network expects as input (module docstring); saved as the weights' ``input``."""

    height: int = 224
    width: int = 224
    window: tuple[float, float] = LUNG_WINDOW  # (level, width) HU
    crop: str = "none"
    crop_margin_mm: float = 5.0
    outside_lungs: str = "keep"
    normalisation: str = "zscore"
    # Slices thinner than this are averaged into slabs of about this thickness (mm), and the
    # network sees one slab per group: a 0.625 mm series reads like a 2.5 mm one. 0: every slice.
    slab_mm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < _STRIDE or value % _STRIDE:
                raise ValueError(f"input {name} must be a multiple of {_STRIDE} (>= {_STRIDE}), got {value}")
        if self.crop not in CROPS:
            raise ValueError(f"input crop must be one of {CROPS}, got {self.crop!r}")
        if self.outside_lungs not in OUTSIDE_LUNGS:
            raise ValueError(f"input outside_lungs must be one of {OUTSIDE_LUNGS}, got {self.outside_lungs!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"input normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}")
        if self.window[1] <= 0:
            raise ValueError(f"input window width must be > 0, got {self.window[1]}")
        if self.crop_margin_mm < 0:
            raise ValueError(f"input crop_margin_mm must be >= 0, got {self.crop_margin_mm}")
        if self.slab_mm < 0:
            raise ValueError(f"input slab_mm must be >= 0, got {self.slab_mm}")

    @property
    def needs_lungs(self) -> bool:
        """Whether pre-processing reads the lung mask."""
        return self.crop == "lungs" or self.outside_lungs != "keep"

    def to_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "channels": 1,
            "window": {"level": self.window[0], "width": self.window[1]},
            "crop": self.crop,
            "crop_margin_mm": self.crop_margin_mm,
            "outside_lungs": self.outside_lungs,
            "normalisation": self.normalisation,
            "slab_mm": self.slab_mm,
            "slices": "lung slices only (model.inference.lung.find_lungs), ascending along the slice normal; "
            "thinner slices averaged into slabs of slab_mm",
            "description": "model.inference.preprocess: window, crop, resize, outside the lungs, normalisation",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        """The spec of a weights' metadata ``input``; weights from before the spec (``image_size``,
        whole slices, z-score, masked with the window minimum when ``outside_lungs`` is present)
        keep working."""
        window = data.get("window", {})
        win = (float(window.get("level", LUNG_WINDOW[0])), float(window.get("width", LUNG_WINDOW[1])))
        if "height" not in data:
            size = int(data["image_size"])
            return cls(
                height=size, width=size, window=win, outside_lungs="window_min" if "outside_lungs" in data else "keep"
            )
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            window=win,
            crop=str(data.get("crop", "none")),
            crop_margin_mm=float(data.get("crop_margin_mm", 5.0)),
            outside_lungs=str(data.get("outside_lungs", "keep")),
            normalisation=str(data.get("normalisation", "zscore")),
            slab_mm=float(data.get("slab_mm", 0.0)),
        )


# The paper's input (method: 224 x 224 whole slices, z-score).
PAPER_INPUT = InputSpec()


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


@dataclass(frozen=True)
class SliceGeometry:
    """Where the network's input lies in a series' slices: the box (top, bottom, left, right; end
    exclusive, possibly beyond the image, which is then padded) resized to height x width."""

    rows: int
    columns: int
    box: tuple[int, int, int, int]
    height: int
    width: int

    @classmethod
    def for_series(
        cls,
        spec: InputSpec,
        rows: int,
        columns: int,
        lung_mask: np.ndarray | None = None,
        pixel_spacing: tuple[float, float] = (1.0, 1.0),
    ) -> SliceGeometry:
        """The geometry of ``spec`` for a series of rows x columns; ``lung_mask`` (any number of
        slices of rows x columns) for the lung crop. Without lungs in the mask the lung crop falls
        back to the whole slice."""
        if spec.crop == "lungs" and lung_mask is not None and lung_mask.any():
            any_r = np.flatnonzero(lung_mask.any(axis=(0, 2)))
            any_c = np.flatnonzero(lung_mask.any(axis=(0, 1)))
            mr = int(round(spec.crop_margin_mm / max(pixel_spacing[0], 1e-6)))
            mc = int(round(spec.crop_margin_mm / max(pixel_spacing[1], 1e-6)))
            box = (
                max(0, int(any_r[0]) - mr),
                min(rows, int(any_r[-1]) + 1 + mr),
                max(0, int(any_c[0]) - mc),
                min(columns, int(any_c[-1]) + 1 + mc),
            )
        elif spec.crop == "lungs":
            box = (0, rows, 0, columns)
        else:  # the paper's: the whole slice, centred in a square
            side = max(rows, columns)
            top, left = (side - rows) // 2, (side - columns) // 2
            box = (-top, side - top, -left, side - left)
        return cls(rows=rows, columns=columns, box=box, height=spec.height, width=spec.width)

    @property
    def box_shape(self) -> tuple[int, int]:
        top, bottom, left, right = self.box
        return bottom - top, right - left

    def crop(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        """(n, 1, rows, columns) -> (n, 1, box rows, box columns), ``fill`` beyond the image."""
        top, bottom, left, right = self.box
        pads = (max(0, -left), max(0, right - self.columns), max(0, -top), max(0, bottom - self.rows))
        x = x[..., max(0, top) : min(self.rows, bottom), max(0, left) : min(self.columns, right)]
        return F.pad(x, pads, value=fill) if any(pads) else x

    def to_network(self, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Cropped (n, 1, box rows, box columns) -> (n, 1, height, width); "bilinear" (antialiased
        when shrinking) for images, "area" for mask fractions."""
        if tuple(x.shape[-2:]) == (self.height, self.width):
            return x
        if mode == "area":
            bigger = x.shape[-2] >= self.height and x.shape[-1] >= self.width
            return F.interpolate(
                x,
                size=(self.height, self.width),
                mode="area" if bigger else "bilinear",
                align_corners=None if bigger else False,
            )
        shrink = x.shape[-2] > self.height or x.shape[-1] > self.width
        return F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False, antialias=shrink)

    def mask_to_network(self, mask: np.ndarray) -> np.ndarray:
        """Masks (n, rows, columns) -> (n, height, width) bool: set where at least half the network
        pixel's area is set."""
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).unsqueeze(1)
            return (self.to_network(self.crop(x, 0.0), "area")[:, 0] >= 0.5).numpy()

    def to_original(self, maps: np.ndarray) -> np.ndarray:
        """Maps (n, height, width) at the network size -> (n, rows, columns) float32 (bilinear),
        zero outside the box."""
        if maps.ndim != 3 or maps.shape[1:] != (self.height, self.width):
            raise ValueError(f"maps must be (n, {self.height}, {self.width}), got shape {maps.shape}")
        top, bottom, left, right = self.box
        bh, bw = self.box_shape
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).unsqueeze(1)
            if (bh, bw) != (self.height, self.width):
                x = F.interpolate(x, size=(bh, bw), mode="bilinear", align_corners=False)
            out = np.zeros((maps.shape[0], self.rows, self.columns), dtype=np.float32)
            r0, c0 = max(0, top), max(0, left)
            r1, c1 = min(self.rows, bottom), min(self.columns, right)
            out[:, r0:r1, c0:c1] = x[:, 0, r0 - top : r1 - top, c0 - left : c1 - left].numpy()
        return out


def _lung_medians(hu: np.ndarray, lung_mask: np.ndarray, low: float, high: float) -> np.ndarray:
    """Per slice, the median clipped HU of its lungs (the series' lung median for a slice without)."""
    clipped = np.clip(hu, low, high)
    series = float(np.median(clipped[lung_mask])) if lung_mask.any() else low
    return np.array(
        [float(np.median(c[m])) if m.any() else series for c, m in zip(clipped, lung_mask)], dtype=np.float32
    )


def prepare_slices(
    hu: np.ndarray, spec: InputSpec, geometry: SliceGeometry, lung_mask: np.ndarray | None = None
) -> np.ndarray:
    """HU slices (n, rows, columns) -> network input (n, 1, height, width) float32 (module docstring).

    ``lung_mask`` (n, rows, columns), the lungs of the same slices, is needed when the spec acts
    outside the lungs; without it the whole region is kept.
    """
    if hu.ndim != 3:
        raise ValueError(f"hu must be (slices, rows, columns), got shape {hu.shape}")
    if hu.shape[1:] != (geometry.rows, geometry.columns):
        raise ValueError(f"slices of {hu.shape[1:]} do not match the geometry's {(geometry.rows, geometry.columns)}")
    if lung_mask is not None and lung_mask.shape != hu.shape:
        raise ValueError(f"lung_mask shape {lung_mask.shape} differs from the slices' {hu.shape}")
    n = hu.shape[0]
    out = np.empty((n, 1, spec.height, spec.width), dtype=np.float32)
    low, high = window_bounds(spec.window)
    outside = spec.outside_lungs if lung_mask is not None and lung_mask.any() else "keep"
    with torch.no_grad():
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            x = torch.from_numpy(np.ascontiguousarray(hu[start:stop], dtype=np.float32)).clamp(low, high).unsqueeze(1)
            x = geometry.to_network(geometry.crop(x, low))
            if outside != "keep":
                assert lung_mask is not None
                m = torch.from_numpy(np.ascontiguousarray(lung_mask[start:stop], dtype=np.float32)).unsqueeze(1)
                frac = geometry.to_network(geometry.crop(m, 0.0), "area")
                if outside == "window_min":
                    keep = (
                        F.max_pool2d(
                            (frac > 0).float(), 2 * LEGACY_LUNG_MARGIN + 1, stride=1, padding=LEGACY_LUNG_MARGIN
                        )
                        > 0
                    )
                    x = torch.where(keep, x, torch.full_like(x, low))
                else:
                    fill = torch.from_numpy(_lung_medians(hu[start:stop], lung_mask[start:stop], low, high)).view(
                        -1, 1, 1, 1
                    )
                    x = torch.where(frac >= 0.5, x, fill.expand_as(x))
            if spec.normalisation == "window":
                x = (x - low) * (2.0 / (high - low)) - 1.0
            else:
                mean = x.mean(dim=(2, 3), keepdim=True)
                std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
                x = torch.where(std > _MIN_STD_HU, (x - mean) / std.clamp_min(_MIN_STD_HU), torch.zeros_like(x))
            out[start:stop] = x.numpy()
    return out


@dataclass
class LungSlices:
    """A series' lung slices ready for the network, and how to map maps back to the series."""

    indices: np.ndarray  # (n,) indices of the lung slices among the series' sorted slices
    inputs: np.ndarray  # (n, 1, height, width) float32
    geometry: SliceGeometry


def slab_size(spec: InputSpec, slice_spacing: float) -> int:
    """How many neighbouring slices make one slab of the spec (1: each slice on its own)."""
    if spec.slab_mm <= 0 or slice_spacing <= 0:
        return 1
    return max(1, int(round(spec.slab_mm / slice_spacing)))


def slab_centres(indices: np.ndarray, size: int) -> np.ndarray:
    """Every ``size``-th lung slice, starting half a slab in: the slices the network sees."""
    if size <= 1 or indices.size == 0:
        return indices
    return indices[min(size // 2, indices.size - 1) :: size]


def slab_means(hu: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """(len(centres), rows, columns) float32: the mean of ``size`` slices around each centre."""
    if size <= 1:
        return np.asarray(hu[centres], dtype=np.float32)
    out = np.empty((centres.size, *hu.shape[1:]), dtype=np.float32)
    for i, c in enumerate(centres):
        lo = max(0, int(c) - size // 2)
        out[i] = hu[lo : min(hu.shape[0], lo + size)].mean(axis=0, dtype=np.float32)
    return out


def prepare_lung_slices(
    hu: np.ndarray,
    lung_mask: np.ndarray,
    spec: InputSpec,
    pixel_spacing: tuple[float, float],
    indices: np.ndarray | None = None,
    slice_spacing: float = 0.0,
) -> LungSlices:
    """The one path from a series (HU volume and its lung mask) to the network's input, for
    training and inference alike. ``indices``: the lung slices (default: :func:`lung_slice_indices`);
    with the spec's ``slab_mm`` and a ``slice_spacing`` below it, every slab's centre (the mean of
    its slices) instead of every slice."""
    if indices is None:
        indices = lung_slice_indices(lung_mask)
    indices = np.asarray(indices, dtype=np.int64)
    lungs = lung_mask[indices] if indices.size else lung_mask[:0]
    geometry = SliceGeometry.for_series(spec, hu.shape[1], hu.shape[2], lungs, pixel_spacing)
    size = slab_size(spec, slice_spacing)
    centres = slab_centres(indices, size)
    slabs = slab_means(hu, centres, size) if size > 1 else hu[centres]
    inputs = prepare_slices(slabs, spec, geometry, lung_mask[centres] if spec.needs_lungs else None)
    return LungSlices(indices=centres, inputs=inputs, geometry=geometry)
