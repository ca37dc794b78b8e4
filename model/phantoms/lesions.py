"""The disease signs of a phantom, as the literature describes them on chest CT (the RSNA consensus
and the radiology of bacterial pneumonia): what only a COVID-19 or a CAP phantom gets. What every
class gets alike (atelectasis, emphysema, nodules, scars, effusions) is in
model.phantoms.confounders.

- COVID-19, by stage: early, pure ground glass (-750..-450 HU), peripheral and posterior, mostly
  bilateral (a fifth unilateral), one to a few rounded patches; progressive, more and larger patches,
  crazy paving (ground glass with reticulation); peak, confluent ground glass with consolidation in
  it; late, organising consolidation (-250..0 HU), reversed halo (a consolidated ring round ground
  glass). The classes overlap where they do in patients: late COVID-19 consolidates.
- CAP, by pattern: lobar (consolidation of -100..+40 HU filling much of one lobe up to its fissure,
  air bronchograms), segmental (a consolidated wedge from the hilum's direction to the pleura),
  bronchopneumonia (patchy consolidation and centrilobular nodules along the bronchi of one or more
  lobes, often both lungs, some ground glass at its edges); a parapneumonic effusion in a third.

Every sign writes its weight (0..1) into ``lesion_weight``; the lesion mask is where it is over 0.5
inside the lungs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from model.phantoms.anatomy import LLL, LOBE_NAMES, LUL, RLL, RML, RUL, Grid, smooth_noise
from model.phantoms.trees import Segment, to_index

COVID_STAGES: tuple[str, ...] = ("early", "progressive", "peak", "late")
CAP_PATTERNS: tuple[str, ...] = ("lobar", "segmental", "bronchopneumonia")


@dataclass
class Depth:
    """Distance (mm) to the lung surface on a coarse grid, with the strides used."""

    depth: np.ndarray
    side: np.ndarray
    stride: tuple[int, int, int]


def coarse_depth(lung_side: np.ndarray, grid: Grid) -> Depth:
    fz = max(1, int(round(5.0 / grid.dz)))
    fxy = max(1, int(round(4.0 / grid.ps)))
    side = lung_side[::fz, ::fxy, ::fxy]
    spacing = (grid.dz * fz, grid.ps * fxy, grid.ps * fxy)
    depth = ndi.distance_transform_edt(side > 0, sampling=spacing).astype(np.float32)
    return Depth(depth=depth, side=side, stride=(fz, fxy, fxy))


def pick_point(
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    code: int | None,
    dmin: float,
    dmax: float,
    posterior: float = 0.0,
    lower: float = 0.0,
    upper_only: bool = False,
    where: np.ndarray | None = None,
) -> np.ndarray | None:
    """A random (t, y, x) mm point in the lung at a depth in [dmin, dmax], weighted towards the back
    (``posterior``) and the base (``lower``); ``where``: a coarse boolean map it must also lie in."""
    sel = (dp.depth >= dmin) & (dp.depth <= dmax) & ((dp.side == code) if code else (dp.side > 0))
    if where is not None:
        sel &= where
    k, i, j = np.nonzero(sel)
    if k.size == 0:
        return None
    t = grid.t[k * dp.stride[0]]
    y = grid.y[i * dp.stride[1]]
    x = grid.x[j * dp.stride[2]]
    u = t / ctx["H"]
    if upper_only:
        keep = u > 0.45
        if not keep.any():
            return None
        t, y, x, u = t[keep], y[keep], x[keep], u[keep]
    w = np.exp(posterior * y / ctx["bi"] - lower * u)
    c = rng.choice(t.size, p=w / w.sum())
    jitter = rng.uniform(-0.5, 0.5, 3) * np.array(
        [grid.dz * dp.stride[0], grid.ps * dp.stride[1], grid.ps * dp.stride[2]]
    )
    return np.array([t[c], y[c], x[c]]) + jitter


def blob_weight(
    grid: Grid,
    shape: tuple[int, int, int],
    center: np.ndarray,
    axes: np.ndarray,
    edge_mm: float,
    rng: np.random.Generator,
    irregular: float = 0.22,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Soft (0..1) weight of an irregular ellipsoid, on its bounding box."""
    reach = axes * (1.0 + irregular * 2.5) + edge_mm
    i0 = np.maximum(np.floor(to_index(grid, center - reach)).astype(int), 0)
    i1 = np.minimum(np.ceil(to_index(grid, center + reach)).astype(int) + 1, np.array(shape))
    if np.any(i1 <= i0):
        return None
    box = (slice(i0[0], i1[0]), slice(i0[1], i1[1]), slice(i0[2], i1[2]))
    T = (grid.t[box[0]] - center[0])[:, None, None] / axes[0]
    Y = (grid.y[box[1]] - center[1])[None, :, None] / axes[1]
    X = (grid.x[box[2]] - center[2])[None, None, :] / axes[2]
    rho = np.sqrt(T**2 + Y**2 + X**2)
    bshape = tuple(int(b - a) for a, b in zip(i0, i1))
    nz = smooth_noise(bshape, rng, cell_mm=(float(axes.mean()) * 0.6,) * 3, spacing=(grid.dz, grid.ps, grid.ps))
    w = np.clip((1.0 + irregular * nz - rho) * float(axes.mean()) / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)
    return box, w


def blend(hu: np.ndarray, box: tuple[slice, ...], w: np.ndarray, target: np.ndarray | float) -> None:
    """hu <- hu + (target - hu) * w on the box (in place)."""
    region = hu[box]
    region += (target - region) * w


def _texture(w: np.ndarray, grid: Grid, rng: np.random.Generator, cell: float) -> np.ndarray:
    return smooth_noise(w.shape, rng, cell_mm=(cell, cell, cell), spacing=(grid.dz, grid.ps, grid.ps))


def _side_name(code: int) -> str:
    return "right" if code == 1 else "left"


def covid_lesions(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    lesion_weight: np.ndarray,
    findings: list[dict[str, Any]],
    stages: tuple[float, ...],
) -> str:
    """COVID-19 signs by stage (module docstring; ``stages``: their probabilities); returns the stage."""
    stage = str(rng.choice(COVID_STAGES, p=list(stages)))
    count = int(rng.integers(*{"early": (1, 5), "progressive": (3, 9), "peak": (6, 15), "late": (3, 9)}[stage]))
    largest = {"early": 22.0, "progressive": 30.0, "peak": 40.0, "late": 32.0}[stage]
    first = int(rng.choice([1, 2]))
    bilateral = rng.random() < 0.8
    for n in range(count):
        code = first if (not bilateral or n % 2 == 0) else 3 - first
        center = pick_point(dp, grid, ctx, rng, code, 2.0, 22.0, posterior=1.6, lower=1.2)
        if center is None:
            continue
        radius = rng.uniform(7.0, largest)
        axes = radius * rng.uniform(0.6, 1.3, 3)
        res = blob_weight(grid, hu.shape, center, axes, 3.0, rng)
        if res is None:
            continue
        box, w = res
        w *= lung_side[box] == code
        pattern = _covid_patch(hu, box, w, grid, hu.shape, center, axes, code, lung_side, stage, rng)
        np.maximum(lesion_weight[box], w, out=lesion_weight[box])
        findings.append(
            {
                "type": pattern,
                "side": _side_name(code),
                "center_mm": [round(float(v), 1) for v in center],
                "radius_mm": round(float(radius), 1),
            }
        )
    return stage


def _covid_patch(
    hu: np.ndarray,
    box: tuple[slice, ...],
    w: np.ndarray,
    grid: Grid,
    shape: tuple[int, int, int],
    center: np.ndarray,
    axes: np.ndarray,
    code: int,
    lung_side: np.ndarray,
    stage: str,
    rng: np.random.Generator,
) -> str:
    """Paint one COVID-19 patch of ``stage``; returns its pattern's name."""
    ggo = rng.uniform(-750.0, -450.0) if stage == "early" else rng.uniform(-700.0, -400.0)
    blend(hu, box, w, ggo + 30.0 * _texture(w, grid, rng, 4.0))
    roll = rng.random()
    if stage in ("progressive", "peak") and roll < 0.35:
        lines = _texture(w, grid, rng, 6.0)
        hu[box] += 170.0 * np.exp(-((lines / 0.18) ** 2)) * (w > 0.4)
        return "ground glass with crazy paving"
    if (stage == "peak" and roll < 0.8) or (stage == "late" and roll < 0.75):
        core = blob_weight(grid, shape, center + rng.normal(0, 2.0, 3), axes * rng.uniform(0.35, 0.7), 2.0, rng)
        if core is not None:
            cbox, cw = core
            cw *= lung_side[cbox] == code
            if stage == "late" and roll < 0.25:  # reversed halo: a consolidated ring round the ground glass
                inner = np.clip((cw - 0.6) / 0.3, 0.0, 1.0)
                blend(hu, cbox, cw * (1.0 - inner), rng.uniform(-150.0, 10.0))
                return "reversed halo"
            blend(hu, cbox, cw, rng.uniform(-250.0, 10.0) + 20.0 * _texture(cw, grid, rng, 5.0))
            return "ground glass with consolidation" if stage == "peak" else "organising consolidation"
    return "ground glass"


def pleural_effusion(
    lung_side: np.ndarray,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    s: int,
    findings: list[dict[str, Any]],
    depth_mm: tuple[float, float] = (18.0, 45.0),
    reason: str = "pleural effusion",
) -> np.ndarray:
    """A dependent (posterior, basal) pleural effusion on side ``s``: fluid layering along the back,
    deepest at the base."""
    code = 1 if s < 0 else 2
    d0 = rng.uniform(*depth_mm)
    h = rng.uniform(2.0, 4.0) * d0 + 20.0
    depth = d0 * np.clip(1.0 - grid.t / h, 0.0, 1.0)
    out = (lung_side == code) & (grid.y[None, :, None] > (ctx["bi"] - depth)[:, None, None])
    finding: dict[str, Any] = {"type": reason, "side": _side_name(code), "depth_mm": round(float(d0), 1)}
    if reason != "parapneumonic effusion":
        finding["confounder"] = True
    findings.append(finding)
    return out


def cap_lesions(
    hu: np.ndarray,
    lung_side: np.ndarray,
    lobes: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    bronchi: list[Segment],
    rng: np.random.Generator,
    lesion_weight: np.ndarray,
    findings: list[dict[str, Any]],
    patterns: tuple[float, ...],
) -> tuple[str, list[int]]:
    """CAP signs by pattern (module docstring; ``patterns``: their probabilities); returns the
    pattern and the sides (-1/+1) involved."""
    pattern = str(rng.choice(CAP_PATTERNS, p=list(patterns)))
    if pattern == "bronchopneumonia":
        sides = _bronchopneumonia(hu, lobes, grid, bronchi, rng, lesion_weight, findings)
    else:
        lobe = int(rng.choice([RUL, RML, RLL, LUL, LLL], p=[0.18, 0.1, 0.3, 0.15, 0.27]))
        if not (lobes == lobe).any():
            lobe = int(np.bincount(lobes[lobes > 0].ravel(), minlength=6)[1:].argmax() + 1)
        if pattern == "lobar":
            _lobar(hu, lobes, lobe, grid, ctx, rng, lesion_weight, findings)
        else:
            _segmental(hu, lobes, lobe, dp, grid, ctx, rng, lesion_weight, findings)
        sides = [-1 if lobe in (RUL, RML, RLL) else 1]
    return pattern, sides


def _consolidate(hu: np.ndarray, box: tuple[slice, ...], w: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    """Consolidation with a ground-glass margin where the weight is partial."""
    margin = np.clip(w / 0.5, 0.0, 1.0)
    blend(hu, box, margin, rng.uniform(-550.0, -400.0))
    core = np.clip((w - 0.45) / 0.3, 0.0, 1.0)
    blend(hu, box, core, rng.uniform(-100.0, 40.0) + 15.0 * _texture(w, grid, rng, 5.0))


def _lobe_box(lobes: np.ndarray, lobe: int) -> tuple[slice, slice, slice] | None:
    found = ndi.find_objects((lobes == lobe).astype(np.int8))
    return found[0] if found and found[0] is not None else None


def _lobar(
    hu: np.ndarray,
    lobes: np.ndarray,
    lobe: int,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    lesion_weight: np.ndarray,
    findings: list[dict[str, Any]],
) -> None:
    """Consolidation of a share of one lobe, dependent parts first, up to its fissure."""
    box = _lobe_box(lobes, lobe)
    if box is None:
        return
    inside = lobes[box] == lobe
    cover = rng.uniform(0.45, 1.0)
    field = _texture(inside, grid, rng, 25.0) * 0.6 + 1.2 * (grid.y[box[1]] / ctx["bi"])[None, :, None]
    level = np.quantile(field[inside], 1.0 - cover) if cover < 0.98 else -np.inf
    w = (np.clip((field - level) / 0.25 + 0.5, 0.0, 1.0) * inside).astype(np.float32)
    _consolidate(hu, box, w, grid, rng)
    np.maximum(lesion_weight[box], w, out=lesion_weight[box])
    findings.append(
        {"type": "lobar consolidation with air bronchograms", "lobe": LOBE_NAMES[lobe], "share": round(float(cover), 2)}
    )


def _segmental(
    hu: np.ndarray,
    lobes: np.ndarray,
    lobe: int,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    lesion_weight: np.ndarray,
    findings: list[dict[str, Any]],
) -> None:
    """A consolidated wedge: apex towards the hilum, base on the pleura of ``lobe``."""
    coarse_lobe = lobes[:: dp.stride[0], :: dp.stride[1], :: dp.stride[2]] == lobe
    code = 1 if lobe in (RUL, RML, RLL) else 2
    tip = pick_point(dp, grid, ctx, rng, code, 0.0, 6.0, posterior=0.6, where=coarse_lobe)
    if tip is None:
        return
    hilum = np.array([ctx["carina_t"] - 30.0, -0.04 * ctx["bi"], (-1 if code == 1 else 1) * (ctx["w_med0"] + 8.0)])
    axis = tip - hilum
    length = float(np.linalg.norm(axis))
    axis /= max(length, 1e-6)
    half_angle = np.radians(rng.uniform(14.0, 26.0))
    reach = length * np.tan(half_angle) + 10.0
    lo, hi = np.minimum(tip, hilum) - reach, np.maximum(tip, hilum) + reach
    i0 = np.maximum(np.floor(to_index(grid, lo)).astype(int), 0)
    i1 = np.minimum(np.ceil(to_index(grid, hi)).astype(int) + 1, np.array(hu.shape))
    if np.any(i1 <= i0):
        return
    box = (slice(i0[0], i1[0]), slice(i0[1], i1[1]), slice(i0[2], i1[2]))
    T = grid.t[box[0]][:, None, None] - hilum[0]
    Y = grid.y[box[1]][None, :, None] - hilum[1]
    X = grid.x[box[2]][None, None, :] - hilum[2]
    along = T * axis[0] + Y * axis[1] + X * axis[2]
    dist = np.sqrt(np.maximum(T**2 + Y**2 + X**2 - along**2, 0.0))
    wobble = 1.0 + 0.25 * _texture(dist, grid, rng, 15.0)
    cone = along * np.tan(half_angle) * wobble - dist
    start = rng.uniform(0.3, 0.55) * length
    w = np.clip(cone / 4.0 + 0.5, 0.0, 1.0) * np.clip((along - start) / 6.0, 0.0, 1.0)
    w = (w * (lobes[box] == lobe)).astype(np.float32)
    _consolidate(hu, box, w, grid, rng)
    np.maximum(lesion_weight[box], w, out=lesion_weight[box])
    findings.append({"type": "segmental consolidation with air bronchograms", "lobe": LOBE_NAMES[lobe]})


def _bronchopneumonia(
    hu: np.ndarray,
    lobes: np.ndarray,
    grid: Grid,
    bronchi: list[Segment],
    rng: np.random.Generator,
    lesion_weight: np.ndarray,
    findings: list[dict[str, Any]],
) -> list[int]:
    """Patchy peribronchial consolidation and centrilobular nodules along the small bronchi of one to
    three lobes (lower lobes first, both lungs in half)."""
    both = rng.random() < 0.5
    first = int(rng.choice([RLL, LLL, RUL, LUL, RML], p=[0.35, 0.3, 0.12, 0.13, 0.1]))
    chosen = {first}
    if both:
        chosen.add(LLL if first in (RUL, RML, RLL) else RLL)
    if rng.random() < 0.3:
        chosen.add(int(rng.choice([RLL, LLL, RML, RUL, LUL])))
    shape = np.array(hu.shape)
    ends = []
    for b in bronchi:
        if b.generation < 3 or b.side == 0:
            continue
        idx = np.round(to_index(grid, b.p1)).astype(int)
        if np.all(idx >= 0) and np.all(idx < shape) and int(lobes[tuple(idx)]) in chosen:
            ends.append(b)
    if not ends:
        return []
    picks = rng.permutation(len(ends))[: int(rng.integers(4, 16))]
    for p in picks:
        b = ends[int(p)]
        if rng.random() < 0.6:
            axes = rng.uniform(6.0, 18.0) * rng.uniform(0.7, 1.3, 3)
            res = blob_weight(grid, hu.shape, b.p1 + rng.normal(0, 2.0, 3), axes, 2.5, rng, irregular=0.3)
            if res is not None:
                box, w = res
                w *= lobes[box] > 0
                _consolidate(hu, box, w, grid, rng)
                np.maximum(lesion_weight[box], w, out=lesion_weight[box])
        for _ in range(int(rng.integers(3, 9))):  # centrilobular nodules, tree-in-bud
            c = b.p1 + rng.normal(0.0, 6.0, 3)
            res = blob_weight(grid, hu.shape, c, np.full(3, rng.uniform(1.8, 4.0)), 1.0, rng, irregular=0.1)
            if res is not None:
                box, w = res
                w *= lobes[box] > 0
                blend(hu, box, w, rng.uniform(-150.0, 30.0))
                np.maximum(lesion_weight[box], w, out=lesion_weight[box])
    names = sorted(LOBE_NAMES[c] for c in chosen)
    findings.append(
        {"type": "bronchopneumonia (patchy peribronchial consolidation, centrilobular nodules)", "lobes": names}
    )
    return sorted({-1 if c in (RUL, RML, RLL) else 1 for c in chosen})
