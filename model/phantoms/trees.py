"""The pulmonary vessel and bronchial trees of a phantom: binary trees from each hilum to points
spread through the lung, radii thinning towards the periphery, bronchi running beside their
arteries; and the painting of a tapered tube into a volume with partial volume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.phantoms.anatomy import SOFT, Anatomy, Grid


@dataclass
class Segment:
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    generation: int
    side: int  # +1 patient left, -1 patient right, 0 mediastinum


def to_index(grid: Grid, p: np.ndarray) -> np.ndarray:
    """(t, y, x) mm -> fractional (k, i, j) voxel index."""
    return np.array([(p[0] - grid.t[0]) / grid.dz, (p[1] - grid.y[0]) / grid.ps, (p[2] - grid.x[0]) / grid.ps])


def _build_tree(p0: np.ndarray, pts: np.ndarray, r: float, gen: int, side: int, out: list[Segment]) -> None:
    """Binary tree from ``p0`` to the points: split along the principal axis, radius x0.78 per
    generation, so that branches thin towards the periphery."""
    if len(pts) == 1 or r < 0.7:
        target = pts.mean(axis=0)
        out.append(Segment(p0, target, r, max(0.4, r * 0.7), gen, side))
        return
    c = pts.mean(axis=0)
    p1 = p0 + (0.38 if gen == 0 else 0.5) * (c - p0)
    out.append(Segment(p0, p1, r, r * 0.92, gen, side))
    d = pts - c
    _, vecs = np.linalg.eigh(d.T @ d)
    order = np.argsort(d @ vecs[:, -1], kind="stable")
    half = len(pts) // 2
    _build_tree(p1, pts[order[:half]], r * 0.78, gen + 1, side, out)
    _build_tree(p1, pts[order[half:]], r * 0.78, gen + 1, side, out)


def airway_vessel_trees(
    an: Anatomy, grid: Grid, ctx: dict[str, Any], lung_side: np.ndarray, rng: np.random.Generator
) -> tuple[list[Segment], list[Segment]]:
    """Segments (t, y, x in mm) of the pulmonary vessels and of the bronchi (main + intrapulmonary)."""
    vessels: list[Segment] = []
    bronchi: list[Segment] = []
    ct, yt, w0, bi = ctx["carina_t"], ctx["yt"], ctx["w_med0"], ctx["bi"]
    carina = np.array([ct, yt, 0.0])
    n_points = 192
    for s, code in ((-1, 1), (1, 2)):
        hilum_b = np.array([ct - 22.0, yt - 2.0, s * (w0 + 6.0)])
        hilum_v = np.array([ct - 32.0, -0.04 * bi, s * (w0 + 8.0)])
        bronchi.append(Segment(carina, hilum_b, an.trachea_radius * 0.72, an.trachea_radius * 0.62, 0, 0))
        vessels.append(Segment(np.array([ct - 30.0, -0.18 * bi, s * 6.0]), hilum_v, 10.0, 8.0, 0, 0))
        idx = np.flatnonzero(lung_side.reshape(-1) == code)
        if idx.size < n_points:
            continue
        pick = rng.choice(idx, size=n_points, replace=False)
        k, i, j = np.unravel_index(pick, lung_side.shape)
        pts = np.stack([grid.t[k], grid.y[i], grid.x[j]], axis=1).astype(np.float64)
        pts += rng.uniform(-0.5, 0.5, pts.shape) * np.array([grid.dz, grid.ps, grid.ps])
        tree: list[Segment] = []
        _build_tree(hilum_v, pts, 7.0, 1, s, tree)
        vessels.extend(tree)
        offset_dir = np.array([0.0, 0.55, 0.85 * s])  # bronchi run posterolateral to their artery
        root: np.ndarray | None = None
        for seg in tree:
            if seg.generation > 6:
                continue
            d = seg.p1 - seg.p0
            d = d / max(np.linalg.norm(d), 1e-6)
            o = offset_dir - np.dot(offset_dir, d) * d
            o = o / max(np.linalg.norm(o), 1e-6)
            shift = (seg.r0 + 0.8 * seg.r0 + 1.0) * o
            bronchi.append(Segment(seg.p0 + shift, seg.p1 + shift, 0.75 * seg.r0, 0.75 * seg.r1, seg.generation, s))
            if root is None:
                root = seg.p0 + shift
        if root is not None:  # join the main bronchus to its tree
            bronchi.append(Segment(hilum_b, root, an.trachea_radius * 0.62, 5.0, 1, 0))
    return vessels, bronchi


def paint_segment(
    hu: np.ndarray, seg: Segment, grid: Grid, value: float, restrict: np.ndarray | None, wall: float | None
) -> None:
    """Blend a tapered tube into ``hu`` with one-pixel partial volume (and a soft-tissue wall)."""
    reach = max(seg.r0, seg.r1) + (wall or 0.0) + grid.ps
    lo = np.minimum(seg.p0, seg.p1) - reach
    hi = np.maximum(seg.p0, seg.p1) + reach
    i0 = np.floor(to_index(grid, lo)).astype(int)
    i1 = np.ceil(to_index(grid, hi)).astype(int) + 1
    i0 = np.maximum(i0, 0)
    i1 = np.minimum(i1, np.array(hu.shape))
    if np.any(i1 <= i0):
        return
    T = grid.t[i0[0] : i1[0]][:, None, None]
    Y = grid.y[i0[1] : i1[1]][None, :, None]
    X = grid.x[i0[2] : i1[2]][None, None, :]
    d = (seg.p1 - seg.p0).astype(np.float32)
    l2 = max(float(d @ d), 1e-6)
    rt, ry, rx = T - seg.p0[0], Y - seg.p0[1], X - seg.p0[2]
    w = np.clip((rt * d[0] + ry * d[1] + rx * d[2]) / l2, 0.0, 1.0)
    dist = np.sqrt((rt - w * d[0]) ** 2 + (ry - w * d[1]) ** 2 + (rx - w * d[2]) ** 2)
    r = seg.r0 + (seg.r1 - seg.r0) * w
    box = hu[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]]
    keep = None if restrict is None else restrict[i0[0] : i1[0], i0[1] : i1[1], i0[2] : i1[2]]
    if wall:
        occ = np.clip((r + wall - dist) / grid.ps + 0.5, 0.0, 1.0)
        if keep is not None:
            occ = occ * keep
        box += (SOFT - box) * occ
    occ = np.clip((r - dist) / grid.ps + 0.5, 0.0, 1.0)
    if keep is not None:
        occ = occ * keep
    box += (value - box) * occ
