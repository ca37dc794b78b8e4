"""The disease signs of a phantom (COVID-19 ground glass, CAP consolidations, pleural effusion)
and the incidental findings every class gets alike (nodules, emphysema-like clusters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from model.phantoms.anatomy import Grid, Segment, smooth_noise, to_index


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
    depth = ndi.distance_transform_edt(side > 0, sampling=(grid.dz * fz, grid.ps * fxy, grid.ps * fxy)).astype(
        np.float32
    )
    return Depth(depth=depth, side=side, stride=(fz, fxy, fxy))


def _pick_point(
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
) -> np.ndarray | None:
    """A random (t, y, x) mm point in the lung at a depth in [dmin, dmax], weighted towards the back
    (``posterior``) and the base (``lower``)."""
    sel = (dp.depth >= dmin) & (dp.depth <= dmax) & ((dp.side == code) if code else (dp.side > 0))
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


def _blob_weight(
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


def covid_lesions(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    lesion_weight: np.ndarray,
    findings: list[dict[str, Any]],
) -> None:
    count = int(rng.integers(2, 9))
    first = int(rng.choice([1, 2]))
    bilateral = rng.random() < 0.9
    for n in range(count):
        code = first if (not bilateral or n % 2 == 0) else 3 - first
        center = _pick_point(dp, grid, ctx, rng, code, 3.0, 16.0, posterior=1.6, lower=1.2)
        if center is None:
            continue
        radius = rng.uniform(10.0, 28.0)
        axes = radius * rng.uniform(0.75, 1.25, 3)
        res = _blob_weight(grid, hu.shape, center, axes, 3.0, rng)
        if res is None:
            continue
        box, w = res
        w *= lung_side[box] == code
        target = rng.uniform(-700.0, -420.0)
        tex = smooth_noise(w.shape, rng, cell_mm=(4.0, 4.0, 4.0), spacing=(grid.dz, grid.ps, grid.ps))
        region = hu[box]
        region += (target + 30.0 * tex - region) * w
        pattern = "ground-glass opacity"
        if rng.random() < 0.3:
            lines = smooth_noise(w.shape, rng, cell_mm=(6.0, 6.0, 6.0), spacing=(grid.dz, grid.ps, grid.ps))
            region += 160.0 * np.exp(-((lines / 0.18) ** 2)) * (w > 0.4)
            pattern = "ground-glass opacity with crazy paving"
        elif rng.random() < 0.3:
            core = _blob_weight(grid, hu.shape, center, axes * 0.45, 2.0, rng)
            if core is not None:
                cbox, cw = core
                cw *= lung_side[cbox] == code
                creg = hu[cbox]
                creg += (rng.uniform(-100.0, 20.0) - creg) * cw
                pattern = "ground-glass opacity with partial consolidation"
        np.maximum(lesion_weight[box], w, out=lesion_weight[box])
        findings.append(
            {
                "type": pattern,
                "side": "right" if code == 1 else "left",
                "center_mm": [round(float(v), 1) for v in center],
                "radius_mm": round(float(radius), 1),
                "hu": round(float(target)),
            }
        )


def cap_lesions(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    bronchi: list[Segment],
    rng: np.random.Generator,
    lesion_weight: np.ndarray,
    findings: list[dict[str, Any]],
) -> list[int]:
    """Segmental/lobar consolidations around segmental bronchi; returns the sides (-1/+1) used."""
    count = 2 if rng.random() < 0.3 else 1
    first = int(rng.choice([-1, 1]))
    sides = [first] if count == 1 else [first, first if rng.random() < 0.5 else -first]
    for s in sides:
        code = 1 if s < 0 else 2
        candidates = [b for b in bronchi if b.side == s and 2 <= b.generation <= 4]
        center = None
        for b in (candidates[i] for i in rng.permutation(len(candidates))):
            idx = np.round(to_index(grid, b.p1) / np.array(dp.stride)).astype(int)
            if (
                np.all(idx >= 0)
                and np.all(idx < np.array(dp.depth.shape))
                and dp.side[tuple(idx)] == code
                and 18.0 <= dp.depth[tuple(idx)] <= 50.0
            ):
                center = b.p1 + rng.uniform(-5.0, 5.0, 3)
                break
        if center is None:
            center = _pick_point(dp, grid, ctx, rng, code, 18.0, 50.0, posterior=0.8, lower=0.6)
        if center is None:
            continue
        radius = rng.uniform(18.0, 36.0)
        axes = radius * rng.uniform(0.75, 1.25, 3)
        outer = _blob_weight(grid, hu.shape, center, axes * 1.08, 5.0, rng, irregular=0.18)
        if outer is None:
            continue
        box, w = outer
        w *= lung_side[box] == code
        region = hu[box]
        region += (rng.uniform(-560.0, -420.0) - region) * w
        core_w = np.clip((w - 0.55) / 0.3, 0.0, 1.0)
        target = rng.uniform(-80.0, 40.0)
        tex = smooth_noise(w.shape, rng, cell_mm=(5.0, 5.0, 5.0), spacing=(grid.dz, grid.ps, grid.ps))
        region += (target + 15.0 * tex - region) * core_w
        np.maximum(lesion_weight[box], w, out=lesion_weight[box])
        findings.append(
            {
                "type": "consolidation with air bronchograms",
                "side": "right" if code == 1 else "left",
                "center_mm": [round(float(v), 1) for v in center],
                "radius_mm": round(float(radius), 1),
                "hu": round(float(target)),
            }
        )
    return sides


def pleural_effusion(
    lung_side: np.ndarray,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    s: int,
    findings: list[dict[str, Any]],
) -> np.ndarray:
    """A dependent (posterior, basal) pleural effusion on side ``s``: a meniscus along the back."""
    code = 1 if s < 0 else 2
    d0 = rng.uniform(18.0, 45.0)
    h = rng.uniform(50.0, 110.0)
    depth = d0 * np.clip(1.0 - grid.t / h, 0.0, 1.0)
    out = (lung_side == code) & (grid.y[None, :, None] > (ctx["bi"] - depth)[:, None, None])
    findings.append(
        {
            "type": "pleural effusion",
            "side": "right" if code == 1 else "left",
            "depth_mm": round(float(d0), 1),
            "height_mm": round(float(h), 1),
        }
    )
    return out


def incidental_findings(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    findings: list[dict[str, Any]],
) -> None:
    """Findings that are not infection, with the same probability in every class."""
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 4))):
            c = _pick_point(dp, grid, ctx, rng, None, 6.0, 80.0)
            if c is None:
                break
            r = rng.uniform(2.0, 5.0)
            res = _blob_weight(grid, hu.shape, c, np.full(3, r), 0.8, rng, irregular=0.05)
            if res is None:
                continue
            box, w = res
            w *= lung_side[box] > 0
            region = hu[box]
            region += (rng.uniform(20.0, 60.0) - region) * w
            findings.append(
                {
                    "type": "small solid nodule (incidental)",
                    "center_mm": [round(float(v), 1) for v in c],
                    "radius_mm": round(float(r), 1),
                }
            )
    if rng.random() < 0.2:
        spots = int(rng.integers(15, 50))
        for _ in range(spots):
            c = _pick_point(dp, grid, ctx, rng, None, 4.0, 80.0, upper_only=True)
            if c is None:
                break
            r = rng.uniform(2.0, 6.0)
            res = _blob_weight(grid, hu.shape, c, np.full(3, r), 1.0, rng, irregular=0.2)
            if res is None:
                continue
            box, w = res
            w *= lung_side[box] > 0
            region = hu[box]
            region += (-985.0 - region) * w
        findings.append({"type": "emphysema-like low-density clusters (incidental)", "count": spots})
