"""What chest CTs of every class carry and is not pneumonia: dependent atelectasis, plate
atelectasis, emphysema (centrilobular and paraseptal), solid and calcified nodules, scars and
fibrotic bands, small pleural effusions. Drawn from the scan's seed, never from the class: a normal
phantom has them as often as a COVID-19 or a CAP one, so they can not tell the classes apart and a
model must learn to look past them. None of them is in the lesion mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.phantoms.anatomy import Grid, smooth_noise
from model.phantoms.lesions import Depth, blend, blob_weight, pick_point, pleural_effusion
from model.phantoms.mix import Mix
from model.phantoms.trees import Segment, paint_segment


def confounders(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    findings: list[dict[str, Any]],
    mix: Mix,
) -> np.ndarray:
    """Paint the confounders (each with its own probability); returns the effusion mask."""
    effusion = np.zeros(hu.shape, dtype=bool)
    if rng.random() < mix.dependent_atelectasis:
        dependent_atelectasis(hu, lung_side, grid, ctx, rng, findings, mix.atelectasis_hu)
    if rng.random() < 0.2:
        plate_atelectasis(hu, lung_side, dp, grid, ctx, rng, findings)
    if rng.random() < 0.25:
        emphysema(hu, lung_side, dp, grid, ctx, rng, findings)
    if rng.random() < 0.4:
        nodules(hu, lung_side, dp, grid, ctx, rng, findings)
    if rng.random() < 0.3:
        scars(hu, lung_side, dp, grid, ctx, rng, findings)
    if rng.random() < 0.2:
        for s in [-1, 1] if rng.random() < 0.4 else [int(rng.choice([-1, 1]))]:
            effusion |= pleural_effusion(lung_side, grid, ctx, rng, s, findings, (5.0, 22.0), "small pleural effusion")
    return effusion


def dependent_atelectasis(
    hu: np.ndarray,
    lung_side: np.ndarray,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    findings: list[dict[str, Any]],
    density_hu: tuple[float, float],
) -> None:
    """A band of denser lung along the posterior pleura of the lower lungs, a few mm to 2 cm thick,
    thinning upwards: from a faint dependent density (-600 HU) to collapsed lung as dense as a
    consolidation (+20 HU), as compressive atelectasis is on real CT (``density_hu``: the range)."""
    height = rng.uniform(0.2, 0.5) * ctx["H"]
    thick = rng.uniform(3.0, 20.0)
    target = rng.uniform(*density_hu)
    both = rng.random() < 0.8
    sides = (1, 2) if both else (int(rng.choice([1, 2])),)
    ks = np.flatnonzero(grid.t < height)
    if ks.size == 0:
        return
    wobble = smooth_noise((ks.size, 1, grid.x.size), rng, (20.0, 20.0, 20.0), (grid.dz, grid.ps, grid.ps))[:, 0]
    rows_mm = grid.y[:, None]
    for n, k in enumerate(ks):
        taper = 1.0 - grid.t[k] / height
        for code in sides:
            lung = lung_side[k] == code
            if not lung.any():
                continue
            cols = lung.any(axis=0)
            back = np.where(cols, np.max(np.where(lung, rows_mm, -1e9), axis=0), -1e9)
            band = thick * taper * np.clip(1.0 + 0.4 * wobble[n], 0.3, 1.7)
            w = np.clip((rows_mm - (back - band)[None, :]) / 2.0 + 0.5, 0.0, 1.0) * lung
            hu[k] += (target - hu[k]) * w
    findings.append(
        {
            "type": "dependent atelectasis",
            "thickness_mm": round(float(thick), 1),
            "hu": round(float(target)),
            "sides": len(sides),
            "confounder": True,
        }
    )


def plate_atelectasis(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    findings: list[dict[str, Any]],
) -> None:
    """One or two thin, nearly horizontal plates of collapsed lung at the bases."""
    for _ in range(int(rng.integers(1, 3))):
        c = pick_point(dp, grid, ctx, rng, None, 5.0, 40.0, lower=3.0)
        if c is None:
            return
        direction = np.array([rng.normal(0.0, 0.15), rng.normal(0.0, 0.4), 1.0])
        direction /= np.linalg.norm(direction)
        half = rng.uniform(15.0, 35.0)
        seg = Segment(c - half * direction, c + half * direction, rng.uniform(1.5, 3.0), rng.uniform(1.0, 2.0), 9, 0)
        paint_segment(hu, seg, grid, float(rng.uniform(-400.0, -100.0)), lung_side > 0, wall=None)
    findings.append({"type": "plate atelectasis", "confounder": True})


def emphysema(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    findings: list[dict[str, Any]],
) -> None:
    """Centrilobular lucencies in the upper lungs, or subpleural (paraseptal) bullae."""
    lung = lung_side > 0
    if rng.random() < 0.6:
        spots = int(rng.integers(20, 80))
        for _ in range(spots):
            c = pick_point(dp, grid, ctx, rng, None, 4.0, 80.0, upper_only=True)
            if c is None:
                break
            res = blob_weight(grid, hu.shape, c, np.full(3, rng.uniform(2.0, 6.0)), 1.0, rng, irregular=0.2)
            if res is not None:
                box, w = res
                blend(hu, box, w * lung[box], -985.0)
        findings.append({"type": "centrilobular emphysema", "count": spots, "confounder": True})
        return
    bullae = int(rng.integers(2, 9))
    for _ in range(bullae):
        c = pick_point(dp, grid, ctx, rng, None, 1.0, 8.0, upper_only=rng.random() < 0.7)
        if c is None:
            break
        r = rng.uniform(6.0, 20.0)
        res = blob_weight(grid, hu.shape, c, np.full(3, r) * rng.uniform(0.8, 1.2, 3), 1.0, rng, irregular=0.1)
        if res is not None:
            box, w = res
            w *= lung[box]
            blend(hu, box, np.clip(w * 3.0, 0.0, 1.0) * (w < 0.6), -650.0)  # the thin wall
            blend(hu, box, np.clip((w - 0.55) / 0.2, 0.0, 1.0), -1000.0)
    findings.append({"type": "paraseptal emphysema (bullae)", "count": bullae, "confounder": True})


def nodules(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    findings: list[dict[str, Any]],
) -> None:
    """One to four small solid nodules, some calcified granulomas."""
    lung = lung_side > 0
    count = int(rng.integers(1, 5))
    for _ in range(count):
        c = pick_point(dp, grid, ctx, rng, None, 4.0, 80.0)
        if c is None:
            break
        calcified = rng.random() < 0.2
        r = rng.uniform(1.5, 3.0) if calcified else rng.uniform(2.0, 6.0)
        res = blob_weight(grid, hu.shape, c, np.full(3, r), 0.8, rng, irregular=0.05)
        if res is not None:
            box, w = res
            blend(hu, box, w * lung[box], rng.uniform(300.0, 700.0) if calcified else rng.uniform(20.0, 60.0))
    findings.append({"type": "small nodules", "count": count, "confounder": True})


def scars(
    hu: np.ndarray,
    lung_side: np.ndarray,
    dp: Depth,
    grid: Grid,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    findings: list[dict[str, Any]],
) -> None:
    """Linear scars and fibrotic bands near the pleura, apices more often."""
    lung = lung_side > 0
    count = int(rng.integers(1, 5))
    for _ in range(count):
        c = pick_point(dp, grid, ctx, rng, None, 2.0, 25.0, upper_only=rng.random() < 0.5)
        if c is None:
            break
        direction = rng.normal(0.0, 1.0, 3)
        direction /= np.linalg.norm(direction)
        half = rng.uniform(10.0, 30.0)
        seg = Segment(c - half * direction, c + half * direction, rng.uniform(1.0, 2.5), rng.uniform(0.6, 1.5), 9, 0)
        paint_segment(hu, seg, grid, float(rng.uniform(-200.0, 40.0)), lung, wall=None)
    findings.append({"type": "scars and fibrotic bands", "count": count, "confounder": True})
