"""Learned lung segmentation: a small 2.5D U-Net (MONAI) on a coarse working grid, trained on
phantoms whose lungs are known exactly, consolidated, collapsed and ground-glass lung included.

Why learned: an HU threshold keeps aerated lung only, so a consolidated lobe (as dense as the chest
wall) falls out of the mask, and the stomach's gas under the left dome falls in. The published
answer is a network trained on pathological lungs (lungmask's R231); this is the same idea at the
size a 2-core CPU runs in about a second for a 300-slice series.

The working grid (:class:`GridSpec`, recorded in the weights' description, so a network trained on
another grid runs on its own): by default in-plane 2.8 mm pixels, a 448 mm square centred on the
image (160 x 160; what lies beyond is outside any chest), slabs of 5 mm along z (the mean of the
slices in each slab).
The network sees three neighbouring slabs as channels (the slab and the ones above and below) in
the window -1024..600 HU mapped to [-1, 1], and gives the lung probability of the middle one. The
probabilities, kept in the lung components (the largest, and every other of at least a tenth of
it), are interpolated back to the series' grid (linear in z, bilinear in-plane); the mask is where
they exceed 0.5, and, in the uncertain band along the edge (0.1 < p < 0.9), every aerated voxel
(below -500 HU): the coarse grid says where the lung's edge is, the full-resolution density draws
it. Dense voxels in the band keep the network's word, so consolidation at the edge is not cut.
Those of them where the probability is under a second, higher cut are the mask's doubtful voxels
(:meth:`LungSegmenter.segment_with_doubt`): the localisation leaves them out of its regions,
since that is where the mask reaches into an effusion, the heart or the diaphragm beside a
consolidation (model.inference.localise.LocalisationSettings.region_lung_probability).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.networks.nets import UNet
from scipy import ndimage as ndi
from torch import nn
from torch.nn import functional as F

from model.inference.network import mixed_precision

WORK_XY_MM = 2.8
WORK_SIZE = 160
WORK_Z_MM = 5.0
WINDOW_HU: tuple[float, float] = (-1024.0, 600.0)
CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 128)
# The boundary at full resolution: where the interpolated probability is uncertain (inside BAND),
# aerated voxels (below AERATED_HU) are lung; the network's grid (2.4 or 2.8 mm) places the edge, the
# density draws it (Dice 0.977 -> 0.989 on phantoms: model/README.md).
BAND: tuple[float, float] = (0.1, 0.9)
AERATED_HU = -500.0
_KEEP_FRACTION = 0.1


# The U-Net halves its grid once per level after the first: the working square must divide by this.
_GRID_MULTIPLE = 2 ** (len(CHANNELS) - 1)
FIELD_OF_VIEW_MM = WORK_XY_MM * WORK_SIZE


@dataclass(frozen=True)
class GridSpec:
    """The working grid a lung network was trained on and must run on: in-plane pixel (mm), the
    square's side (pixels) and the slab thickness along z (mm)."""

    xy_mm: float = WORK_XY_MM
    size: int = WORK_SIZE
    z_mm: float = WORK_Z_MM

    def __post_init__(self) -> None:
        for name in ("xy_mm", "z_mm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.25 <= value <= 20.0):
                raise ValueError(f"work_{name}: must be a number of mm from 0.25 to 20, got {value!r}")
        if not isinstance(self.size, int) or self.size < _GRID_MULTIPLE or self.size % _GRID_MULTIPLE:
            raise ValueError(f"work_size: must be a multiple of {_GRID_MULTIPLE} pixels, got {self.size!r}")

    @classmethod
    def for_pixel(cls, xy_mm: float, z_mm: float = WORK_Z_MM) -> GridSpec:
        """Pixels of ``xy_mm`` over the default grid's field of view (448 mm), rounded up to the
        network's multiple."""
        if not (math.isfinite(xy_mm) and xy_mm > 0):
            raise ValueError(f"work_xy_mm: must be a positive number of mm, got {xy_mm!r}")
        size = math.ceil(FIELD_OF_VIEW_MM / xy_mm / _GRID_MULTIPLE) * _GRID_MULTIPLE
        return cls(xy_mm=float(xy_mm), size=int(size), z_mm=float(z_mm))

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> GridSpec:
        """The grid a lung network's description (lungs.json, the metadata's ``lungs``) records;
        the default one where it records none (weights from before the grid was recorded)."""
        window = description.get("window_hu")
        if window is not None and [float(v) for v in window] != list(WINDOW_HU):
            raise ValueError(f"window_hu: this version reads {list(WINDOW_HU)} only, the weights say {window!r}")
        return cls(
            xy_mm=float(description.get("work_xy_mm", WORK_XY_MM)),
            size=int(description.get("work_size", WORK_SIZE)),
            z_mm=float(description.get("work_z_mm", WORK_Z_MM)),
        )


def build_lung_net(channels: tuple[int, ...] = CHANNELS) -> nn.Module:
    """The 2.5D U-Net: 3 input slabs, 1 output logit, ``channels`` per level (strides of 2)."""
    return UNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=0,
        norm="batch",
    )


@dataclass(frozen=True)
class WorkGrid:
    """How one series maps onto the working grid: its slices grouped into slabs, and its in-plane
    size after resampling to the grid's pixel (then centred in its square)."""

    slices: int
    rows: int
    columns: int
    slabs: int
    resized: tuple[int, int]
    spec: GridSpec = GridSpec()

    @classmethod
    def for_series(
        cls, shape: tuple[int, int, int], spacing: tuple[float, float, float], spec: GridSpec | None = None
    ) -> WorkGrid:
        spec = spec or GridSpec()
        n, rows, cols = shape
        dz, dy, dx = spacing
        slabs = max(1, int(round(n * dz / spec.z_mm))) if dz < spec.z_mm else n
        resized = (max(1, int(round(rows * dy / spec.xy_mm))), max(1, int(round(cols * dx / spec.xy_mm))))
        return cls(slices=n, rows=rows, columns=cols, slabs=min(slabs, n), resized=resized, spec=spec)

    def _offsets(self) -> tuple[int, int]:
        return (self.spec.size - self.resized[0]) // 2, (self.spec.size - self.resized[1]) // 2

    def to_work(self, volume: np.ndarray, fill: float, chunk: int = 32) -> torch.Tensor:
        """(slices, rows, columns) -> (slabs, size, size) float32: area-resampled in-plane,
        slab means along z, centred and padded (or cropped) with ``fill``."""
        parts = []
        with torch.no_grad():
            for start in range(0, self.slices, chunk):
                x = torch.from_numpy(np.ascontiguousarray(volume[start : start + chunk], dtype=np.float32))[:, None]
                parts.append(F.interpolate(x, size=self.resized, mode="area")[:, 0])
            small = torch.cat(parts)
            if self.slabs != self.slices:
                flat = small.permute(1, 2, 0).reshape(1, -1, self.slices)
                small = F.adaptive_avg_pool1d(flat, self.slabs).reshape(*self.resized, self.slabs).permute(2, 0, 1)
            out = torch.full((self.slabs, self.spec.size, self.spec.size), fill, dtype=torch.float32)
            r0, c0 = self._offsets()
            sr, sc = self._overlap(r0, self.resized[0]), self._overlap(c0, self.resized[1])
            out[:, sr[0] : sr[1], sc[0] : sc[1]] = small[:, sr[2] : sr[3], sc[2] : sc[3]]
        return out

    def to_series(
        self,
        work: torch.Tensor,
        hu: np.ndarray | None = None,
        chunk: int = 32,
        doubtful: np.ndarray | None = None,
        doubt_below: float = 0.5,
    ) -> np.ndarray:
        """(slabs, size, size) probabilities -> (slices, rows, columns) bool: where the
        interpolated probability exceeds 0.5; with ``hu``, the boundary refined at full resolution
        (module docstring: aerated voxels in the uncertain band along the edge are lung). With
        ``hu`` and ``doubtful`` (a bool array of the same shape, all False): the mask's dense voxels
        (at least AERATED_HU) whose probability is below ``doubt_below`` are set True in it."""
        small = self.along_slices(work)
        out = np.zeros((self.slices, self.rows, self.columns), dtype=bool)
        with torch.no_grad():
            any_z = np.flatnonzero((small > BAND[0]).flatten(1).any(dim=1).numpy())
            for start in range(0, any_z.size, chunk):
                idx = any_z[start : start + chunk]
                up = self.in_plane(small, idx)
                mask = up > 0.5
                if hu is not None:
                    aerated = hu[idx] < AERATED_HU
                    if doubtful is not None and doubt_below > 0.5:
                        doubtful[idx] = mask & (up < doubt_below) & ~aerated
                    mask |= (up > BAND[0]) & (up < BAND[1]) & aerated
                out[idx] = mask
        return out

    def _overlap(self, offset: int, size: int) -> tuple[int, int, int, int]:
        """(work start, work stop, source start, source stop) of a source of ``size`` placed at
        ``offset`` in the working square (negative: cropped)."""
        w0, s0 = max(0, offset), max(0, -offset)
        n = min(self.spec.size - w0, size - s0)
        return w0, w0 + n, s0, s0 + n

    def along_slices(self, work: torch.Tensor) -> torch.Tensor:
        """(slabs, size, size) -> (slices, *resized): the series' part of the working square,
        interpolated linearly from slab centres to slices."""
        r0, c0 = self._offsets()
        sr, sc = self._overlap(r0, self.resized[0]), self._overlap(c0, self.resized[1])
        small = torch.zeros((self.slabs, *self.resized), dtype=torch.float32)
        small[:, sr[2] : sr[3], sc[2] : sc[3]] = work[:, sr[0] : sr[1], sc[0] : sc[1]]
        if self.slabs != self.slices:
            with torch.no_grad():
                flat = small.permute(1, 2, 0).reshape(1, -1, self.slabs)
                small = F.interpolate(flat, size=self.slices, mode="linear", align_corners=False)
                small = small.reshape(*self.resized, self.slices).permute(2, 0, 1)
        return small

    def in_plane(self, small: torch.Tensor, slices: np.ndarray) -> np.ndarray:
        """The ``slices`` of :meth:`along_slices`' output at the series' rows and columns, bilinear."""
        with torch.no_grad():
            up = F.interpolate(
                small[torch.from_numpy(np.asarray(slices, dtype=np.int64))][:, None],
                size=(self.rows, self.columns),
                mode="bilinear",
                align_corners=False,
            )
        return up[:, 0].numpy()


def normalise(work_hu: torch.Tensor) -> torch.Tensor:
    low, high = WINDOW_HU
    return (work_hu.clamp(low, high) - low) * (2.0 / (high - low)) - 1.0


def stack_neighbours(work: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """(slabs, H, W) -> (len(index), 3, H, W): each slab with the ones below and above (the ends
    repeat themselves)."""
    n = work.shape[0]
    idx = torch.arange(n) if index is None else index
    below, above = (idx - 1).clamp(0, n - 1), (idx + 1).clamp(0, n - 1)
    return torch.stack([work[below], work[idx], work[above]], dim=1)


def keep_lung_components(prob: torch.Tensor, min_voxels: int = 8) -> torch.Tensor:
    """Zero the probabilities outside the lung components: 3D components of p > 0.5 on the working
    grid, the largest kept with every other of at least a tenth of its size (the other lung, or a
    lung cut in two by disease), each dilated by one voxel so the interpolation keeps its edge."""
    labels, count = ndi.label((prob > 0.5).numpy())
    if count == 0:
        return torch.zeros_like(prob)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero((sizes >= _KEEP_FRACTION * sizes.max()) & (sizes >= min_voxels)) + 1
    mask = ndi.binary_dilation(np.isin(labels, keep), iterations=1)
    return prob * torch.from_numpy(mask)


class LungSegmenter:
    """A trained lung network (weights loaded once) and how to run it on a series."""

    def __init__(
        self, network: nn.Module, device: str | torch.device = "cpu", batch: int = 32, grid: GridSpec | None = None
    ) -> None:
        self.network = network.eval().to(device)
        self.device = torch.device(device)
        self.batch = batch
        self.grid = grid or GridSpec()  # the working grid it was trained on

    def probabilities(self, work_hu: torch.Tensor) -> torch.Tensor:
        """(slabs, H, W) working-grid HU -> lung probabilities of the same shape."""
        x = normalise(work_hu)
        out = torch.empty_like(x)
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch):
                idx = torch.arange(start, min(x.shape[0], start + self.batch))
                with mixed_precision(self.device):
                    logits = self.network(stack_neighbours(x, idx).to(self.device))
                out[idx] = torch.sigmoid(logits[:, 0].float()).cpu()
        return out

    def segment(self, hu: np.ndarray, spacing: tuple[float, float, float] | list[float]) -> np.ndarray:
        """Boolean lung mask (slices, rows, columns) of a HU volume; ``spacing`` (slice distance,
        row spacing, column spacing) in mm."""
        return self.segment_with_doubt(hu, spacing)[0]

    def segment_with_doubt(
        self, hu: np.ndarray, spacing: tuple[float, float, float] | list[float], doubt_below: float = 0.5
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The lung mask and, when ``doubt_below`` > 0.5, its dense voxels (at least AERATED_HU)
        where the network's lung probability is below ``doubt_below``: where the mask is least sure
        of dense tissue (None otherwise)."""
        if hu.ndim != 3:
            raise ValueError(f"hu must be (slices, rows, columns), got shape {hu.shape}")
        dz, dy, dx = (float(s) for s in spacing)
        if min(dz, dy, dx) <= 0 or not all(math.isfinite(v) for v in (dz, dy, dx)):
            raise ValueError(f"spacing must be positive, got {spacing}")
        doubtful = np.zeros(hu.shape, dtype=bool) if doubt_below > 0.5 else None
        if hu.size == 0:
            return np.zeros(hu.shape, dtype=bool), doubtful
        grid = WorkGrid.for_series(hu.shape, (dz, dy, dx), self.grid)
        prob = keep_lung_components(self.probabilities(grid.to_work(hu, WINDOW_HU[0])))
        return grid.to_series(prob, hu, doubtful=doubtful, doubt_below=doubt_below), doubtful


def describe(grid: GridSpec | None = None) -> dict[str, Any]:
    """The working grid and network, as the weights' metadata records them."""
    grid = grid or GridSpec()
    return {
        "kind": "unet-2.5d",
        "channels": list(CHANNELS),
        "work_xy_mm": grid.xy_mm,
        "work_size": grid.size,
        "work_z_mm": grid.z_mm,
        "window_hu": list(WINDOW_HU),
        "description": (
            f"model.inference.lungnet: 3 neighbouring {grid.z_mm:g} mm slabs at {grid.xy_mm:g} mm pixels "
            "-> lung probability"
        ),
    }
