"""Weakly supervised localisation: multi-scale CAMs, Integrated Gradients, the joint map, regions.

From the method (Hu et al. 2020, the authors' code):

- per scale s (P3, P4, P5) the CAM channel of the target class, upsampled bilinearly to the slice;
- Integrated Gradients of each scale's pooled logit of the target class, 25 steps from a constant
  baseline of -1 in the normalised input space, shown as the absolute attribution clipped at its
  99th percentile (the authors' grayscale visualisation) -> S3, S4, S5;
- joint map ``(S5 + 2) * (S4 + 2) * (S3 + 2)``, min-max normalised to [0, 1], restricted to lungs.

Ours (the method leaves it open):

- Per-scale maps M_s. CAMs are normalised by the series maximum of that scale over all lung slices,
  not per slice, so that slices without evidence stay dark. In "cam+ig" mode, on the IG slices (the
  most suspicious ones) M_s = CAM_s * IG_s, where IG_s is the attribution above smoothed by a
  Gaussian and normalised to [0, 1] within the slice; the IG factor sharpens the CAM to the pixels
  whose intensity drives the logit. Other slices keep M_s = CAM_s * c, c being the mean IG factor
  over the lungs of the IG slices, so the two kinds of slices stay comparable.
- The joint map is built per series, min-max normalised over the lung voxels of the whole series.
- Regions: threshold the joint map, grow through the solid consolidation they touch
  (:func:`solid_consolidation`), 3D connected components (26-connectivity) inside the lungs,
  components under ``min_volume_ml`` dropped; numbered strongest (max score) first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import overload

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from model.contract.result import ABNORMAL_CLASSES, Region
from model.inference.network import WeaklySupervisedNet

# "auto": "cam" on a CPU, "cam+ig" on a GPU (IG costs 25 network passes per examined slice).
LOCALISATION_MODES: tuple[str, ...] = ("auto", "cam", "cam+ig")
IG_STEPS = 25
IG_BASELINE = -1.0


@dataclass(frozen=True)
class LocalisationSettings:
    """How the joint map and its regions are made (all settings of the predictor)."""

    mode: str = "auto"
    ig_slices: int = 8  # IG runs on this many of the most suspicious lung slices
    ig_steps: int = IG_STEPS
    ig_baseline: float = IG_BASELINE
    ig_batch: int = 25  # interpolation steps per backward pass
    ig_sigma: float = 2.0  # Gaussian smoothing of IG maps, in pixels of the network input
    threshold: float = 0.5  # of the joint map in [0, 1], for regions
    min_volume_ml: float = 0.5  # regions smaller than this (a 1 cm sphere is 0.5 ml) are not reported
    # Weight the joint map by how much denser than the slice's lungs each voxel is (density_excess):
    # the network says which slices and which part of the lung; the density says which voxels there
    # are abnormal. Infection is denser than aerated lung (ground glass -700..-300 HU, consolidation
    # above); healthy lung is not.
    # The slice's lungs are their ``density_percentile``-th percentile of HU: aerated lung even when
    # disease fills most of the slice (a median then lies in the disease and erases it).
    density_weighting: bool = True
    density_offset_hu: float = 100.0
    density_range_hu: float = 200.0
    density_percentile: float = 15.0
    # Where the weighting saturates (``density_offset_hu + density_range_hu`` above the slice's
    # aerated lung) a vessel's blurred rim weighs as much as a consolidation, and the
    # map's peak, the hottest point the viewer shows, can sit on aerated lung a few millimetres beside
    # the lesion. This share of the weight keeps rising with density up to ``density_peak_range_hu``
    # above ``density_offset_hu``: of two equally warm voxels the denser one is hotter, while a
    # voxel's weight moves by at most the share. 0: off (weights before 0.4.4).
    density_peak_share: float = 0.0
    density_peak_range_hu: float = 600.0
    # Before the density weighting, the joint map counts from this share of its range up (rescaled
    # to [0, 1]): the low end of the network's map covers much of the lungs, and every vessel in
    # it is dense; chosen on calibration phantoms (model/README.md).
    cam_floor: float = 0.3
    # Regions grow through solid consolidation they touch: lung voxels of at least
    # ``consolidation_hu`` that survive an in-plane opening with a disk of ``consolidation_opening_mm``
    # (vessels and bronchial walls are thinner). The network's map covers the most telling part of a
    # large consolidation, not all of it; the lung involvement then under-counted it (model/README.md).
    # None: regions are the thresholded map only.
    consolidation_hu: float | None = -300.0
    consolidation_opening_mm: float = 4.0
    # Regions also grow through the map at or above this lower threshold where it touches them
    # (hysteresis): a thresholded core takes the fainter map around it, not a faint spot alone.
    # Confluent ground glass over much of a lung is hot at its densest part only; the faint rest
    # then went uncounted and the involvement was under-counted (docs/experiments.md, section 11).
    # None: off (every shipped weights folder so far).
    grow_threshold: float | None = None
    # The decisions whose regions grow through the fainter map: COVID-19's ground glass is hot at its
    # densest part only. A CAP consolidation already grows through the solid consolidation it lies
    # in, and the faint map around it is aerated lung made warm by noise and vessels: grown for CAP
    # too, its regions got worse in 21 of 22 series (docs/experiments.md, section 11).
    grow_classes: tuple[str, ...] = ("covid",)
    # Regions leave out the dense voxels (at least -500 HU) of the lung mask where the lung
    # network's probability is below this: at its uncertain edge, the mask reaches into an effusion,
    # the heart or the diaphragm beside a consolidation, which the density weighting makes hot.
    # 0.5 (the mask's own cut) leaves them in. The mask itself (lung volume, involvement, what the
    # map is normalised over) keeps them. Weights without a lung network: no effect.
    region_lung_probability: float = 0.8

    def resolved(self, device: str) -> LocalisationSettings:
        """The settings with "auto" replaced by the mode for ``device``."""
        if self.mode != "auto":
            return self
        return replace(self, mode="cam+ig" if device.startswith("cuda") else "cam")

    def __post_init__(self) -> None:
        if self.mode not in LOCALISATION_MODES:
            raise ValueError(f"localisation mode must be one of {LOCALISATION_MODES}, got {self.mode!r}")
        if self.ig_slices < 0 or self.ig_steps < 1 or self.ig_batch < 1:
            raise ValueError("ig_slices must be >= 0, ig_steps and ig_batch >= 1")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if self.min_volume_ml < 0:
            raise ValueError(f"min_volume_ml must be >= 0, got {self.min_volume_ml!r}")
        if self.density_range_hu <= 0:
            raise ValueError(f"density_range_hu must be > 0, got {self.density_range_hu!r}")
        if not 0.0 <= self.density_peak_share < 1.0:
            raise ValueError(f"density_peak_share must be in [0, 1), got {self.density_peak_share!r}")
        if self.density_peak_range_hu <= 0:
            raise ValueError(f"density_peak_range_hu must be > 0, got {self.density_peak_range_hu!r}")
        if not 0.0 <= self.density_percentile <= 100.0:
            raise ValueError(f"density_percentile must be in [0, 100], got {self.density_percentile!r}")
        if not 0.0 <= self.cam_floor < 1.0:
            raise ValueError(f"cam_floor must be in [0, 1), got {self.cam_floor!r}")
        if self.consolidation_opening_mm < 0:
            raise ValueError(f"consolidation_opening_mm must be >= 0, got {self.consolidation_opening_mm!r}")
        if self.grow_threshold is not None and not 0.0 < self.grow_threshold < self.threshold:
            raise ValueError(
                f"grow_threshold must be above 0 and below threshold ({self.threshold!r}), got {self.grow_threshold!r}"
            )
        object.__setattr__(self, "grow_classes", tuple(self.grow_classes))  # a JSON list from metadata
        unknown = [c for c in self.grow_classes if c not in ABNORMAL_CLASSES]
        if unknown:
            raise ValueError(
                f"grow_classes: {unknown!r} are not decisions with regions ({', '.join(ABNORMAL_CLASSES)})"
            )
        if not 0.5 <= self.region_lung_probability < 1.0:
            raise ValueError(f"region_lung_probability must be in [0.5, 1), got {self.region_lung_probability!r}")


def density_excess(
    hu: np.ndarray,
    lung_mask: np.ndarray,
    offset_hu: float = 100.0,
    range_hu: float = 200.0,
    percentile: float = 15.0,
    peak_share: float = 0.0,
    peak_range_hu: float = 600.0,
) -> np.ndarray:
    """Per voxel, how far above its slice's aerated lung it lies (the ``percentile``-th percentile
    of the slice's lung HU): 0 up to ``offset_hu`` above it, rising linearly to 1 at
    ``offset_hu + range_hu`` above; 0 outside the lungs. With ``peak_share`` s > 0 that is scaled
    by ``1 - s + s * e`` where e rises likewise from 0 to 1 over ``peak_range_hu``: denser keeps
    weighing more beyond the saturation. float32 of ``hu``'s shape. Slice by slice
    (a full-series float copy of the HU is not needed); :func:`weight_by_density` applies it to a
    map without the full-size result."""
    if hu.shape != lung_mask.shape:
        raise ValueError(f"hu {hu.shape} and lung mask {lung_mask.shape} differ in shape")
    out = np.zeros(hu.shape, dtype=np.float32)
    for z in np.flatnonzero(lung_mask.any(axis=(1, 2))):
        out[z] = _slice_excess(hu[z], lung_mask[z], offset_hu, range_hu, percentile, peak_share, peak_range_hu)
    return out


def _slice_excess(
    hu: np.ndarray,
    lung: np.ndarray,
    offset_hu: float,
    range_hu: float,
    percentile: float,
    peak_share: float,
    peak_range_hu: float,
) -> np.ndarray:
    aerated = float(np.percentile(hu[lung].astype(np.float32, copy=False), percentile))
    above = hu.astype(np.float32) - np.float32(aerated + offset_hu)
    excess = above * np.float32(1.0 / range_hu)
    np.clip(excess, 0.0, 1.0, out=excess)
    if peak_share > 0:
        above *= np.float32(peak_share / peak_range_hu)
        np.clip(above, 0.0, np.float32(peak_share), out=above)
        above += np.float32(1.0 - peak_share)
        excess *= above
    excess *= lung
    return excess


def weight_by_density(
    heat: np.ndarray,
    hu: np.ndarray,
    lung_mask: np.ndarray,
    offset_hu: float = 100.0,
    range_hu: float = 200.0,
    percentile: float = 15.0,
    peak_share: float = 0.0,
    peak_range_hu: float = 600.0,
) -> np.ndarray:
    """``heat *= density_excess(hu, lung_mask, ...)`` in place, one slice at a time: the same
    values without a second map of the series' size (a 1,000-slice 512 x 512 series: 1 GB)."""
    if heat.shape != hu.shape or hu.shape != lung_mask.shape:
        raise ValueError(f"heat {heat.shape}, hu {hu.shape} and lung mask {lung_mask.shape} differ in shape")
    has_lung = np.asarray(lung_mask.any(axis=(1, 2)))
    for z in range(heat.shape[0]):
        if has_lung[z]:
            heat[z] *= _slice_excess(hu[z], lung_mask[z], offset_hu, range_hu, percentile, peak_share, peak_range_hu)
        else:
            heat[z] = 0.0
    return heat


def solid_consolidation(
    hu: np.ndarray,
    lung_mask: np.ndarray,
    pixel_spacing: tuple[float, float],
    min_hu: float = -300.0,
    opening_mm: float = 4.0,
) -> np.ndarray:
    """Lung voxels of at least ``min_hu`` that survive, slice by slice, an opening with a square of
    half side 0.8 x ``opening_mm`` (about a disk of that radius): consolidation, not the vessels and
    bronchial walls that are as dense but thinner. Bool of ``hu``'s shape."""
    if hu.shape != lung_mask.shape:
        raise ValueError(f"hu {hu.shape} and lung mask {lung_mask.shape} differ in shape")
    out = np.zeros(hu.shape, dtype=bool)
    ry = max(1, int(round(0.8 * opening_mm / max(pixel_spacing[0], 1e-6))))
    rx = max(1, int(round(0.8 * opening_mm / max(pixel_spacing[1], 1e-6))))
    zs = np.flatnonzero(lung_mask.any(axis=(1, 2)))
    if zs.size == 0:
        return out
    rows, cols = np.flatnonzero(lung_mask.any(axis=(0, 2))), np.flatnonzero(lung_mask.any(axis=(0, 1)))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Erosion then dilation, each as two 1D running extremes (scipy: constant time per pixel),
    # on the lung slices cropped to the lungs' box; beyond the box counts as not dense. What
    # survives the erosion is mostly little (consolidation, not vessels): the dilation runs only in
    # its box grown by the radius, where all its output lies (the same result, in a fraction of the time).
    dense = (lung_mask[zs, y0:y1, x0:x1] & (hu[zs, y0:y1, x0:x1] >= min_hu)).view(np.uint8)
    dense = ndimage.minimum_filter1d(dense, 2 * rx + 1, axis=2, mode="constant", cval=0)
    dense = ndimage.minimum_filter1d(dense, 2 * ry + 1, axis=1, mode="constant", cval=0)
    kept = bounding_box(dense)
    if kept is None:
        return out
    kz, ky, kx = kept
    ky = slice(max(ky.start - ry, 0), min(ky.stop + ry, dense.shape[1]))
    kx = slice(max(kx.start - rx, 0), min(kx.stop + rx, dense.shape[2]))
    part = ndimage.maximum_filter1d(dense[kz, ky, kx], 2 * rx + 1, axis=2, mode="constant", cval=0)
    part = ndimage.maximum_filter1d(part, 2 * ry + 1, axis=1, mode="constant", cval=0)
    opened = np.zeros(dense.shape, dtype=bool)
    opened[kz, ky, kx] = part.view(bool)
    out[zs, y0:y1, x0:x1] = opened
    out &= lung_mask
    return out


def region_growth(
    hu: np.ndarray,
    heatmap: np.ndarray,
    region_space: np.ndarray,
    spacing: tuple[float, float, float],
    settings: LocalisationSettings,
    decision: str,
) -> np.ndarray | None:
    """What thresholded regions grow through (``find_regions``' ``grow_into``): the solid
    consolidation of ``region_space`` (``settings.consolidation_hu``) and, for a ``decision`` of
    ``settings.grow_classes``, the map at or above ``settings.grow_threshold``; None when both are
    off."""
    grow = None
    if settings.consolidation_hu is not None:
        grow = solid_consolidation(
            hu, region_space, (spacing[1], spacing[2]), settings.consolidation_hu, settings.consolidation_opening_mm
        )
    if settings.grow_threshold is not None and decision in settings.grow_classes:
        faint = (heatmap >= settings.grow_threshold) & region_space
        grow = faint if grow is None else grow | faint
    return grow


def upsample_cams(cams: Sequence[torch.Tensor], size: int | tuple[int, int]) -> torch.Tensor:
    """Per-scale CAMs (n, h_s, w_s) of one class -> (n, scales, H, W), bilinear."""
    out = [F.interpolate(c.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0] for c in cams]
    return torch.stack(out, dim=1).clamp_min(0.0)


def normalise_cams_series(cams: torch.Tensor) -> torch.Tensor:
    """Divide each scale by its maximum over the whole series (n, scales, H, W) -> [0, 1]."""
    peak = cams.amax(dim=(0, 2, 3), keepdim=True)
    return cams / peak.clamp_min(1e-12)


def integrated_gradients(
    network: WeaklySupervisedNet,
    images: torch.Tensor,
    targets: torch.Tensor,
    steps: int = IG_STEPS,
    baseline: float = IG_BASELINE,
    batch: int = IG_STEPS,
) -> torch.Tensor:
    """Integrated Gradients of every scale's pooled logit of ``targets`` w.r.t. the input.

    ``images`` (n, 1, S, S) in the normalised space, ``targets`` (n,) class indices. Riemann
    midpoint rule over ``steps``; interpolated inputs are run ``batch`` at a time (they may mix
    slices), and one backward per scale serves the whole batch because in eval mode each sample's
    logit depends on its own input only. Returns raw attributions (n, scales, S, S), float32.
    Needs autograd: do not call under ``torch.inference_mode``.
    """
    if network.training:
        raise RuntimeError("integrated_gradients needs the network in eval mode (no dropout, fixed BatchNorm)")
    n = images.shape[0]
    n_scales = len(network.heads)
    device = images.device
    images = images.float()
    base = torch.full_like(images[:1], baseline)
    alphas = (torch.arange(steps, device=device, dtype=torch.float32) + 0.5) / steps
    grads = torch.zeros((n, n_scales) + tuple(images.shape[1:]), dtype=torch.float32, device=device)
    # (slice, alpha) pairs, flattened, run in chunks of ``batch``.
    pairs = [(i, k) for i in range(n) for k in range(steps)]
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        idx = torch.tensor([i for i, _ in chunk], device=device)
        a = alphas[torch.tensor([k for _, k in chunk], device=device)].view(-1, 1, 1, 1)
        x = (base + a * (images[idx] - base)).detach().requires_grad_(True)
        with torch.enable_grad():
            out = network(x)
            tgt = targets[idx].view(-1, 1)
            for s, logits in enumerate(out.logits):
                y = logits.float().gather(1, tgt).sum()
                (g,) = torch.autograd.grad(y, x, retain_graph=s < n_scales - 1)
                grads[:, s].index_add_(0, idx, g.float())
    grads /= steps
    return (images - base).unsqueeze(1) * grads


def visualise_attribution(attr: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """The authors' grayscale view: |attr| summed over channels, (x - min) / (p99 - min), clipped."""
    mag = attr.abs()
    if mag.dim() == 5:  # (n, scales, channels, H, W)
        mag = mag.sum(dim=2)
    flat = mag.flatten(start_dim=-2)
    vmax = torch.quantile(flat, percentile / 100.0, dim=-1, keepdim=True).unsqueeze(-1)
    vmin = flat.amin(dim=-1, keepdim=True).unsqueeze(-1)
    return ((mag - vmin) / (vmax - vmin).clamp_min(1e-12)).clamp(0.0, 1.0)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) maps."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (xs / sigma) ** 2)
    kernel = kernel / kernel.sum()
    shape = maps.shape
    x = maps.reshape(-1, 1, shape[-2], shape[-1]).float()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.reshape(shape)


def ig_factor(attr: torch.Tensor, lung: torch.Tensor | None, sigma: float) -> torch.Tensor:
    """IG attributions (n, scales, 1, S, S) -> smoothed factor in [0, 1] per slice and scale.

    ``lung`` (n, S, S) bool restricts the per-slice normalisation to the lungs where given.
    """
    vis = gaussian_blur(visualise_attribution(attr), sigma)
    if lung is not None:
        vis = vis * lung.unsqueeze(1).to(vis.dtype)
    peak = vis.amax(dim=(2, 3), keepdim=True)
    return vis / peak.clamp_min(1e-12)


@overload
def joint_map(maps: torch.Tensor) -> torch.Tensor: ...
@overload
def joint_map(maps: np.ndarray) -> np.ndarray: ...
def joint_map(maps: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The method's joint map of per-scale maps (..., scales, H, W): product of (M_s + 2)."""
    out = maps[..., 0, :, :] + 2.0
    for s in range(1, maps.shape[-3]):
        out = out * (maps[..., s, :, :] + 2.0)
    return out


def min_max(values: np.ndarray, mask: np.ndarray | None = None, inplace: bool = False) -> np.ndarray:
    """Min-max normalise to [0, 1] (over ``mask`` where given; 0 outside it); flat input -> 0.

    ``inplace`` reuses ``values`` (float32) for the result: no full-size temporaries, for maps of a
    whole series.
    """
    ref = values[mask] if mask is not None else values
    lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 0.0)
    del ref
    out = values if inplace and values.dtype == np.float32 else values.astype(np.float32)
    if hi <= lo:
        out[...] = 0.0
        return out
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    if mask is not None:
        np.multiply(out, mask, out=out)
    return out


def find_regions(
    heatmap: np.ndarray,
    lung_mask: np.ndarray,
    spacing: tuple[float, float, float],
    threshold: float,
    min_volume_ml: float = 0.0,
    grow_into: np.ndarray | None = None,
) -> tuple[np.ndarray, list[Region]]:
    """Threshold + 3D connected components (26-connectivity) of the heatmap inside the lungs.

    ``grow_into`` (bool, the heatmap's shape): voxels that join a thresholded region they touch,
    directly or through each other (e.g. :func:`solid_consolidation`); they never start a region.
    Returns (labels uint16 of the heatmap's shape, regions numbered 1.. by descending max score).
    ``spacing`` is (dz, dy, dx) in mm.
    """
    if heatmap.shape != lung_mask.shape:
        raise ValueError(f"heatmap {heatmap.shape} and lung mask {lung_mask.shape} differ in shape")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels = np.zeros(heatmap.shape, dtype=np.uint16)
    # Every region lies in the lungs: threshold and label within the lungs' box only (the int32
    # labels of a whole 1,000-slice series would be 1 GB); boxes and peaks are shifted back.
    lung_box = bounding_box(lung_mask)
    if lung_box is None:
        return labels, []
    origin = tuple(b.start for b in lung_box)
    lung_mask, heatmap = lung_mask[lung_box], heatmap[lung_box]
    fg = (heatmap >= threshold) & lung_mask
    # Growing the thresholded map through ``grow_into`` = the components of both together that hold
    # a thresholded voxel (one labelling pass, not an iterated dilation).
    grown = fg | (grow_into[lung_box] & lung_mask) if grow_into is not None else fg
    raw, count = ndimage.label(grown, structure=np.ones((3, 3, 3), dtype=bool))
    del grown
    if count == 0:
        return labels, []
    boxed = labels[lung_box]
    objects = ndimage.find_objects(raw)
    candidates: list[tuple[float, int, tuple[slice, ...]]] = []
    for k, box in enumerate(objects, start=1):
        if box is None:
            continue
        sub = raw[box] == k
        n_vox = int(sub.sum())
        if n_vox * voxel_ml < min_volume_ml:
            continue
        if grow_into is not None and not fg[box][sub].any():
            continue  # consolidation the map does not point at
        candidates.append((float(heatmap[box][sub].max()), k, box))
    candidates.sort(key=lambda c: -c[0])
    regions: list[Region] = []
    for index, (_, k, box) in enumerate(candidates, start=1):
        if index > np.iinfo(np.uint16).max:
            break
        sub = raw[box] == k
        scores = heatmap[box][sub]
        boxed[box][sub] = index
        local_peak = np.argwhere(sub)[int(np.argmax(scores))]
        peak = tuple(int(p + b.start + o) for p, b, o in zip(local_peak, box, origin))
        z0, y0, x0 = (b.start + o for b, o in zip(box, origin))
        z1, y1, x1 = (b.stop - 1 + o for b, o in zip(box, origin))
        regions.append(
            Region(
                index=index,
                slice_range=(int(z0), int(z1)),
                bbox=(int(z0), int(y0), int(x0), int(z1), int(y1), int(x1)),
                volume_ml=float(sub.sum()) * voxel_ml,
                mean_score=float(scores.mean()),
                max_score=float(scores.max()),
                peak=(peak[0], peak[1], peak[2]),
            )
        )
    return labels, regions


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box (one slice per axis) holding every set voxel of ``mask``; None when empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        where = np.flatnonzero(mask.any(axis=others))
        if where.size == 0:
            return None
        box.append(slice(int(where[0]), int(where[-1]) + 1))
    return tuple(box)


def involvement_percent(region_labels: np.ndarray, lung_mask: np.ndarray) -> float:
    """Share of the lung voxels inside a region, in percent (0 when there is no lung)."""
    lung = int(np.count_nonzero(lung_mask))
    if lung == 0:
        return 0.0
    return 100.0 * float(np.count_nonzero((region_labels > 0) & lung_mask)) / lung
