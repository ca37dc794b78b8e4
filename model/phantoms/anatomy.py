"""The anatomy of a phantom: the patient's parameters, the voxel grid, and the solid anatomy painted
slice by slice (body and habitus, arms, shoulders, ribs, scapulae, clavicles, spine, mediastinum,
heart and great vessels, trachea, lungs with their lobes above the diaphragm domes, liver, spleen,
stomach with gas, bowel gas, kidneys, the table). model.phantoms.phantom puts a phantom together;
the airway and vessel trees are in model.phantoms.trees.

Coordinates: x to the patient's left along a row, y posterior down a column (mm from the body
centre), t = mm above the lowest lung point (u = t / lung height: 0 at the base, 1 at the apex).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from model.phantoms.scan import Scan

# Tissue HU (before texture, contrast and noise).
AIR, FAT, MUSCLE, SOFT, BLOOD, LIVER, SPLEEN = -1000.0, -100.0, 45.0, 30.0, 40.0, 55.0, 45.0
MED_FAT, BONE_MARROW, BONE_CORTEX, DISC, CSF, FLUID, KIDNEY = -90.0, 230.0, 800.0, 80.0, 15.0, 12.0, 35.0
TABLE_HU = (150.0, 60.0, 300.0)
# Lobes (model.phantoms.phantom's lobe map).
RUL, RML, RLL, LUL, LLL = 1, 2, 3, 4, 5
LOBE_NAMES = {
    RUL: "right upper lobe",
    RML: "right middle lobe",
    RLL: "right lower lobe",
    LUL: "left upper lobe",
    LLL: "left lower lobe",
}


@dataclass(frozen=True)
class Anatomy:
    """Patient parameters (mm, HU) drawn from the patient seed."""

    a: float  # body half width
    b: float  # body half depth
    squareness: float  # superellipse exponent of the body outline (2 = ellipse)
    fat: float
    muscle: float
    rib: float  # rib layer thickness
    lung_height: float
    lung_width: float  # lateral extent factor of each lung
    lung_depth: float  # antero-posterior extent factor
    dome_right: float
    dome_left: float
    recess_tilt: float
    parenchyma: float
    gravity: float
    heart_scale: float
    heart_shift: float
    mediastinum: float  # width factor
    trachea_radius: float
    carina_fraction: float
    rib_pitch: float
    rib_drop: float
    rib_phase: float
    disc_phase: float
    stomach: float  # stomach radius
    stomach_gas: float  # fraction of the stomach above the air-fluid level (0 = none)
    bowel_gas: int  # pockets of colon gas under the domes
    breasts: float  # radius, 0 = none
    arm_gap: float
    oblique: tuple[float, float]  # oblique fissure: height fraction at the front and at the back
    horizontal: float  # right horizontal fissure, height fraction
    body_dx: float
    body_dy: float


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    a = rng.uniform(125.0, 195.0)
    front = rng.uniform(0.0, 0.12)
    return Anatomy(
        a=a,
        b=a * rng.uniform(0.6, 0.8),
        squareness=rng.uniform(2.0, 2.8),
        fat=rng.uniform(4.0, 40.0),
        muscle=rng.uniform(6.0, 15.0),
        rib=rng.uniform(8.0, 11.0),
        lung_height=rng.uniform(0.95, 1.2) * a * 1.35,
        lung_width=rng.uniform(0.48, 0.56),
        lung_depth=rng.uniform(0.86, 0.96),
        dome_right=rng.uniform(50.0, 85.0),
        dome_left=rng.uniform(38.0, 68.0),
        recess_tilt=rng.uniform(10.0, 28.0),
        parenchyma=rng.uniform(-880.0, -800.0),
        gravity=rng.uniform(15.0, 90.0),
        heart_scale=rng.uniform(0.85, 1.2),
        heart_shift=rng.uniform(-0.06, 0.1),
        mediastinum=rng.uniform(0.85, 1.25),
        trachea_radius=rng.uniform(7.5, 11.0),
        carina_fraction=rng.uniform(0.56, 0.68),
        rib_pitch=rng.uniform(23.0, 31.0),
        rib_drop=rng.uniform(45.0, 80.0),
        rib_phase=rng.uniform(0.0, 30.0),
        disc_phase=rng.uniform(0.0, 27.0),
        stomach=rng.uniform(30.0, 55.0),
        stomach_gas=rng.uniform(0.15, 0.6) if rng.random() < 0.7 else 0.0,
        bowel_gas=int(rng.integers(0, 5)),
        breasts=rng.uniform(30.0, 70.0) if rng.random() < 0.35 else 0.0,
        arm_gap=rng.uniform(5.0, 35.0),
        oblique=(front, rng.uniform(0.62, 0.8)),
        horizontal=rng.uniform(0.5, 0.62),
        body_dx=rng.uniform(-8.0, 8.0),
        body_dy=rng.uniform(-12.0, 12.0),
    )


@dataclass
class Grid:
    """Voxel centres in patient mm, relative to the body centre (x, y) and the lung base (t)."""

    x: np.ndarray  # (columns,)
    y: np.ndarray  # (rows,)
    t: np.ndarray  # (slices,) mm above the lowest lung point
    ps: float
    dz: float
    origin: tuple[float, float, float]  # patient (x, y, z) of voxel (0, 0, 0)
    body_center: tuple[float, float]  # patient (x, y) of the body centre


def make_grid(
    anatomy: Anatomy,
    scan: Scan,
    rng: np.random.Generator,
    slices: int | None,
    rows: int,
    columns: int,
    slice_spacing: float | None,
    max_slices: int = 400,
) -> tuple[Grid, float]:
    """The voxel grid and the slice thickness. Without ``slice_spacing`` the slices cover the scan
    range (upper abdomen to the neck); the field of view is the protocol's at 512 x 512, widened to
    hold the patient, so a smaller matrix gives the same anatomy at coarser pixels."""
    coverage = anatomy.lung_height + scan.below + scan.above
    if slices is None:
        n = int(np.clip(round(coverage / scan.thickness), min(24, max_slices), max_slices))
    else:
        n = int(slices)
    dz = float(slice_spacing) if slice_spacing is not None else coverage / n
    if dz <= 0:
        raise ValueError(f"slice_spacing must be > 0, got {slice_spacing}")
    thickness = max(scan.thickness, dz) if slices is not None or slice_spacing is not None else scan.thickness
    fov = float(np.clip(max(scan.pixel_mm_512 * 512.0, 2.0 * anatomy.a * 1.08), 260.0, 500.0))
    ps = fov / max(rows, columns)
    # With a given spacing the lungs are centred in the covered range (partial coverage).
    t0 = 0.0 if slice_spacing is None else (scan.below + anatomy.lung_height / 2.0) - dz * (n - 1) / 2.0
    t = t0 + dz * np.arange(n) - scan.below
    cx, cy = anatomy.body_dx, anatomy.body_dy + anatomy.b * 0.05
    x = (np.arange(columns) - (columns - 1) / 2.0) * ps - cx
    y = (np.arange(rows) - (rows - 1) / 2.0) * ps - cy
    table_z = -rng.uniform(150.0, 450.0)
    origin = (float(x[0] + cx), float(y[0] + cy), float(table_z + t0))
    grid = Grid(
        x=x.astype(np.float32),
        y=y.astype(np.float32),
        t=t.astype(np.float32),
        ps=ps,
        dz=dz,
        origin=origin,
        body_center=(cx, cy),
    )
    return grid, thickness


def smoothstep(v: np.ndarray | float) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3.0 - 2.0 * v)


def bump(u: np.ndarray | float, lo: float, hi: float, ramp: float) -> np.ndarray:
    """1 inside [lo, hi], falling smoothly to 0 within ``ramp`` outside."""
    return smoothstep((u - lo + ramp) / ramp) * smoothstep((hi + ramp - u) / ramp)


def smooth_noise(
    shape: tuple[int, ...],
    rng: np.random.Generator,
    cell_mm: tuple[float, float, float],
    spacing: tuple[float, float, float],
) -> np.ndarray:
    """Unit-variance smooth random field: a coarse normal grid, interpolated linearly in z, then
    bilinearly in-plane (separable, much cheaper than a full trilinear upsampling)."""
    n, rows, cols = (int(s) for s in shape)
    cz, cy, cx = (max(2, int(math.ceil(s * sp / c)) + 1) for s, sp, c in zip(shape, spacing, cell_mm))
    g = torch.from_numpy(rng.standard_normal((cz, cy * cx), dtype=np.float32))
    with torch.no_grad():
        gz = F.interpolate(g.T[None], size=n, mode="linear", align_corners=True)[0].T.reshape(n, 1, cy, cx)
        out = F.interpolate(gz, size=(rows, cols), mode="bilinear", align_corners=True)[:, 0].numpy()
    sample = out[:: max(1, n // 8), ::7, ::7]
    return out / max(float(sample.std()), 1e-6)


class _Maps:
    """2D maps of one patient on the grid, computed once and reused for every slice."""

    def __init__(self, an: Anatomy, grid: Grid) -> None:
        X = np.broadcast_to(grid.x[None, :], (grid.y.size, grid.x.size)).astype(np.float32)
        Y = np.broadcast_to(grid.y[:, None], (grid.y.size, grid.x.size)).astype(np.float32)
        self.X, self.Y = X, Y
        self.ai = an.a - an.fat - an.muscle - an.rib
        self.bi = an.b - an.fat - an.muscle - an.rib
        ai, bi = self.ai, self.bi
        theta = np.arctan2(Y, X)
        self.cos, self.sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
        self.phi = np.abs(np.angle(np.exp(1j * (np.arctan2(Y, X) - np.pi / 2)))).astype(np.float32)  # 0 back, pi front
        self.yv = bi - 4.0  # vertebral body
        self.rv = 0.12 * an.a
        self.yt = 0.12 * bi  # trachea
        self.w_med0 = (0.09 * ai + 10.0) * an.mediastinum
        dv = np.hypot(X, Y - self.yv)
        self.vert, self.vert_core = dv < self.rv, dv < self.rv - 2.0
        yc = self.yv + self.rv + 8.0
        dc = np.hypot(X, Y - yc)
        self.posterior_elements = ((dc < 14.0) & (dc > 8.5)) | ((np.abs(X) < 4.0) & (Y > yc) & (Y < yc + 35.0))
        self.canal = dc <= 8.5
        self.w_med = self.w_med0 + 14.0 * np.exp(-(((Y - self.yv) / 28.0) ** 2))
        self.medial = np.abs(X) < self.w_med
        hx, hy = (0.12 + an.heart_shift) * ai, -0.28 * bi
        self.hax, self.hay = 0.42 * ai * an.heart_scale, 0.45 * bi * an.heart_scale
        self.heart2d = (((X - hx) / self.hax) ** 2 + ((Y - hy) / self.hay) ** 2).astype(np.float32)
        self.desc_aorta = np.hypot(X - 0.16 * ai - 8.0, Y - (self.yv - self.rv - 4.0)) < 12.0
        self.asc_aorta = np.hypot(X + 0.08 * ai, Y + 0.25 * bi) < 15.0
        self.svc = np.hypot(X + 0.08 * ai + 24.0, Y + 0.2 * bi) < 9.0
        self.pulm_trunk = np.hypot(X - 0.1 * ai, Y + 0.3 * bi) < 13.0
        arch_y = -0.25 * bi + (X + 0.08 * ai) / (0.24 * ai + 8.0) * (self.yv - self.rv - 4.0 + 0.25 * bi)
        self.arch = (np.abs(Y - arch_y) < 13.0) & (X > -0.08 * ai - 14.0) & (X < 0.16 * ai + 20.0)
        dt = np.hypot(X, Y - self.yt)
        self.trachea_wall, self.trachea_lumen = dt < an.trachea_radius + 2.0, dt < an.trachea_radius
        self.oesophagus = np.hypot(X - 6.0, Y - (self.yt + an.trachea_radius + 9.0)) < 7.0
        self.right_half = X < 0
        self.stomach2d = ((X - 0.42 * ai) ** 2 + ((Y + 0.15 * bi) * 1.2) ** 2).astype(np.float32)
        self.kidney2d = [((X - s * 0.45 * ai) / 32.0) ** 2 + ((Y - 0.55 * bi) / 24.0) ** 2 for s in (-1, 1)]
        self.domes = {}
        self.lateral = {}
        for s in (-1, 1):
            cx = s * ai * 0.5
            dome_h = an.dome_right if s < 0 else an.dome_left
            dome = np.clip(1.0 - ((X - cx) / (ai * 0.55)) ** 2 - ((Y + 0.05 * bi) / (bi * 0.95)) ** 2, 0.0, 1.0)
            self.domes[s] = (an.recess_tilt * (1.0 - Y / bi) / 2.0 + dome_h * dome).astype(np.float32)
            self.lateral[s] = s * X > self.w_med
        jj = (np.arange(X.shape[1]) - (X.shape[1] - 1) / 2.0)[None, :]
        ii = (np.arange(X.shape[0]) - (X.shape[0] - 1) / 2.0)[:, None]
        self.fov = (jj**2 + ii**2) <= (max(X.shape) / 2.0) ** 2


def body_depth(an: Anatomy, maps: _Maps, u: float, arms_up: bool) -> tuple[np.ndarray, float, float]:
    """Depth (mm) inside the body outline of one slice (a superellipse that widens at the shoulders
    and narrows to the neck), and its half axes."""
    shoulders = 0.0 if arms_up else 0.2
    width = 1.0 + shoulders * float(bump(u, 0.92, 1.05, 0.08)) - 0.5 * float(smoothstep((u - 1.08) / 0.12))
    depth = 1.0 - 0.22 * float(smoothstep((u - 1.05) / 0.15))
    a, b = an.a * width, an.b * depth
    p = an.squareness
    rho = ((np.abs(maps.X) / a) ** p + (np.abs(maps.Y) / b) ** p) ** (1.0 / p)
    # Distance along the ray from the centre: the outline's radius in that direction times 1 - rho.
    radius = 1.0 / ((np.abs(maps.cos) / a) ** p + (np.abs(maps.sin) / b) ** p) ** (1.0 / p)
    return ((1.0 - rho) * radius).astype(np.float32), a, b


def static_anatomy(an: Anatomy, grid: Grid, scan: Scan) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """HU of the solid anatomy (float32; lungs left at air), the lung side map (int8: 0 none,
    1 right, 2 left) and a context of shared measures and masks (``body``, ``fov``, ...)."""
    maps = _Maps(an, grid)
    n, rows, cols = grid.t.size, grid.y.size, grid.x.size
    labels = np.empty((n, rows, cols), dtype=np.float32)
    side = np.zeros((n, rows, cols), dtype=np.int8)
    body = np.zeros((n, rows, cols), dtype=bool)
    gas_any = False
    for k in range(n):
        u = float(grid.t[k] / an.lung_height)
        depth, a_k, _ = body_depth(an, maps, u, scan.arms_up)
        body[k] = _paint_wall(labels[k], an, maps, depth, grid.t[k], u, scan.arms_up, a_k)
        thorax = depth > an.fat + an.muscle + an.rib
        _paint_spine(labels[k], maps, grid.t[k], an, body[k])
        lungs = _paint_lungs(side[k], an, maps, grid.t[k], u, thorax)
        not_lung = thorax & ~lungs
        labels[k][not_lung & maps.medial] = MED_FAT
        _paint_mediastinum(labels[k], side[k], an, maps, grid.t[k], u, thorax, not_lung)
        if u < 0.5:
            gas_any |= _paint_abdomen(labels[k], an, maps, grid.t[k], u, not_lung)
        side[k][~thorax] = 0
    if scan.contrast > 0:
        labels[labels == BLOOD] += scan.contrast
    ctx = {
        "ai": maps.ai,
        "bi": maps.bi,
        "yv": maps.yv,
        "rv": maps.rv,
        "w_med0": maps.w_med0,
        "yt": maps.yt,
        "carina_t": an.carina_fraction * an.lung_height,
        "H": an.lung_height,
        "fov": maps.fov,
        "body": body,
        "stomach_gas": gas_any,
    }
    return labels, side, ctx


def _paint_wall(
    hu: np.ndarray, an: Anatomy, maps: _Maps, depth: np.ndarray, t: float, u: float, arms_up: bool, a_k: float
) -> np.ndarray:
    """Air, fat, muscle, soft tissue, breasts, arms, ribs, scapulae, clavicles, humeral heads;
    returns the body mask of the slice."""
    hu.fill(AIR)
    body = depth > 0
    hu[body] = FAT
    hu[depth > an.fat] = MUSCLE
    hu[depth > an.fat + an.muscle + an.rib] = SOFT
    X, Y = maps.X, maps.Y
    if an.breasts > 0 and 0.15 < u < 0.7:
        r = an.breasts * float(bump(u, 0.3, 0.55, 0.15))
        for s in (-1, 1):
            d = np.hypot(X - s * 0.45 * an.a, (Y + an.b - 0.35 * r) * 1.3)
            gland = d < r
            hu[gland & ~body] = FAT
            hu[(d < 0.6 * r) & ~(depth > an.fat + an.muscle)] = SOFT - 5.0
            body |= gland
    if not arms_up and u < 0.98:
        for s in (-1, 1):
            cx = s * (a_k + an.arm_gap + 45.0)
            arm = ((X - cx) / 45.0) ** 2 + (Y / 55.0) ** 2 < 1.0
            hu[arm] = MUSCLE - 10.0
            dh = np.hypot(X - cx, Y + 5.0)
            hu[arm & (dh < 13.0)] = BONE_CORTEX
            hu[arm & (dh < 9.0)] = BONE_MARROW
            body |= arm
    if -0.1 < u < 1.08:
        _paint_ribs(hu, an, maps, depth, t)
    if 0.5 < u < 1.02:
        rim = depth - an.fat - 0.15 * an.muscle
        plate = (rim > 0) & (rim < 5.0) & (maps.phi > 0.45) & (maps.phi < 1.15)
        hu[plate] = BONE_CORTEX * 0.75
    if 0.98 < u < 1.07:
        front = -(an.b - an.fat - 4.0)
        clav = (np.abs(Y - front - 0.08 * np.abs(X)) < 6.0) & (np.abs(X) > 12.0) & (np.abs(X) < 0.85 * a_k)
        hu[clav & body] = BONE_CORTEX * 0.8
    if not arms_up and 0.92 < u < 1.1:
        for s in (-1, 1):
            head = np.hypot(X - s * (a_k - 32.0), Y + 0.1 * an.b) < 22.0
            hu[head & body] = BONE_MARROW + 100.0
    return body


def _paint_ribs(hu: np.ndarray, an: Anatomy, maps: _Maps, depth: np.ndarray, t: float) -> None:
    rib_depth = depth - (an.fat + an.muscle * 0.6)
    zoff = an.rib_drop * (1.0 - np.cos(maps.phi)) / 2.0
    band = np.mod(t + zoff - an.rib_phase, an.rib_pitch)
    rib_width = 0.4 * an.rib_pitch
    ribs = (rib_depth > 0) & (rib_depth < an.rib) & (band < rib_width) & (maps.phi < np.pi - 0.45)
    hu[ribs] = BONE_MARROW
    edge = (band < 1.6) | (band > rib_width - 1.6) | (rib_depth < 1.8) | (rib_depth > an.rib - 1.8)
    hu[ribs & edge] = BONE_CORTEX
    front = -(an.b - an.fat - an.muscle)
    sternum = (np.abs(maps.X) < 14.0) & (maps.Y > front - 2.0) & (maps.Y < front + 9.0)
    if 0.3 < t / an.lung_height < 0.95:
        hu[sternum] = BONE_MARROW + 150.0


def _paint_spine(hu: np.ndarray, maps: _Maps, t: float, an: Anatomy, body: np.ndarray) -> None:
    if np.mod(t - an.disc_phase, 27.0) < 5.0:
        hu[maps.vert] = DISC
    else:
        hu[maps.vert] = BONE_CORTEX
        hu[maps.vert_core] = BONE_MARROW
    hu[maps.posterior_elements & body] = BONE_CORTEX * 0.7
    hu[maps.canal] = CSF


def _paint_lungs(sd: np.ndarray, an: Anatomy, maps: _Maps, t: float, u: float, thorax: np.ndarray) -> np.ndarray:
    """Per side an ellipse (shrinking towards the apex), inside the thorax, lateral to the
    mediastinum, above the diaphragm dome (higher on the right, deepest in the posterior recess)."""
    if not -0.05 < u < 1.0:
        return np.zeros(sd.shape, dtype=bool)
    q = 1.0 if u < 0.62 else math.sqrt(max(0.0, 1.0 - ((u - 0.62) / 0.38) ** 2))
    if q <= 0:
        return np.zeros(sd.shape, dtype=bool)
    ai, bi = maps.ai, maps.bi
    ax_, ay_ = ai * an.lung_width * q, bi * an.lung_depth * q
    cy_ = 0.06 * bi + (1.0 - q) * 0.25 * bi
    for s, code in ((-1, 1), (1, 2)):
        cxk = s * ai * (0.5 + (1.0 - q) * 0.05)
        ell = ((maps.X - cxk) / ax_) ** 2 + ((maps.Y - cy_) / ay_) ** 2 < 1.0
        sd[ell & thorax & maps.lateral[s] & (t > maps.domes[s])] = code
    return sd > 0


def _paint_mediastinum(
    hu: np.ndarray,
    sd: np.ndarray,
    an: Anatomy,
    maps: _Maps,
    t: float,
    u: float,
    thorax: np.ndarray,
    not_lung: np.ndarray,
) -> None:
    hz, haz = 0.2 * an.lung_height, 0.21 * an.lung_height * an.heart_scale
    heart_lim = 1.0 - ((t - hz) / haz) ** 2
    if heart_lim > 0:
        rim = (1.0 + 6.0 / min(maps.hax, maps.hay)) ** 2
        hu[(maps.heart2d < heart_lim * rim) & thorax] = FAT
        hu[(maps.heart2d < heart_lim) & thorax] = BLOOD
        sd[maps.heart2d < heart_lim * rim] = 0
    vessels = []
    if u < 0.66:
        vessels.append(maps.desc_aorta)
    if 0.3 < u < 0.64:
        vessels += [maps.asc_aorta, maps.svc]
    if 0.45 < u < 0.58:
        vessels.append(maps.pulm_trunk)
    if 0.6 < u < 0.68:
        vessels.append(maps.arch)
    for m in vessels:
        m = m & thorax
        hu[m] = BLOOD
        sd[m] = 0
    if t > an.carina_fraction * an.lung_height:
        inside = hu > AIR + 1.0
        hu[maps.trachea_wall & inside] = SOFT + 20.0
        hu[maps.trachea_lumen & inside] = AIR
        sd[maps.trachea_wall] = 0
    if u > 0.25:
        hu[maps.oesophagus & not_lung] = SOFT + 10.0
    if u > 1.0:  # neck: thyroid around the trachea
        thyroid = (
            (np.hypot(maps.X, maps.Y - maps.yt) < an.trachea_radius + 18.0)
            & ~maps.trachea_wall
            & (maps.Y < maps.yt + 4.0)
        )
        hu[thyroid & thorax] = 90.0


def _paint_abdomen(hu: np.ndarray, an: Anatomy, maps: _Maps, t: float, u: float, not_lung: np.ndarray) -> bool:
    """Liver, spleen, stomach (with its gas above the air-fluid level), bowel gas and kidneys under
    the domes; returns whether gas was painted."""
    abdomen = not_lung & ~maps.medial & (hu == SOFT)
    hu[abdomen & maps.right_half] = LIVER
    hu[abdomen & ~maps.right_half] = SPLEEN
    gas = False
    st_t = an.dome_left * 0.45
    dz = t - st_t
    r2 = an.stomach**2 - 1.5 * dz**2
    if r2 > 0:
        stomach = abdomen & (maps.stomach2d < r2)
        hu[stomach] = SOFT + 5.0
        inner = stomach & (maps.stomach2d < r2 * 0.8)
        hu[inner] = FLUID + 8.0
        if an.stomach_gas > 0:
            level = -0.15 * maps.bi - math.sqrt(r2) * 0.8 + 2.0 * math.sqrt(r2) * 0.8 * an.stomach_gas
            pocket = inner & (maps.Y < level)
            hu[pocket] = AIR
            gas = bool(pocket.any())
    for i in range(an.bowel_gas):
        ang = 1.3 + 0.9 * i
        cx, cy = 0.55 * maps.ai * math.cos(ang) * (1 if i % 2 else -1), -0.55 * maps.bi * abs(math.sin(ang))
        ct = -20.0 - 15.0 * i
        if abs(t - ct) < 14.0:
            pocket = abdomen & (np.hypot(maps.X - cx, maps.Y - cy) < 14.0 - abs(t - ct))
            hu[pocket] = AIR
            gas |= bool(pocket.any())
    if u < 0.05:
        for k2d in maps.kidney2d:
            hu[abdomen & (k2d < 1.0 - ((t + 60.0) / 50.0) ** 2)] = KIDNEY
    return gas


def lobe_map(lung_side: np.ndarray, grid: Grid, an: Anatomy, bi: float) -> np.ndarray:
    """Lobe codes (RUL, RML, RLL, LUL, LLL) of the lung voxels, 0 elsewhere: the oblique fissure rises
    from the front of the base to the back of the upper third; the right horizontal fissure splits
    the part in front of it."""
    out = np.zeros(lung_side.shape, dtype=np.int8)
    yfrac = np.clip((grid.y + bi) / (2.0 * bi), 0.0, 1.0)
    front, back = an.oblique
    t_obl = (front + (back - front) * yfrac) * an.lung_height  # (rows,)
    t_hor = an.horizontal * an.lung_height
    for k in range(lung_side.shape[0]):
        sd = lung_side[k]
        if not sd.any():
            continue
        lower = (grid.t[k] < t_obl)[:, None]
        right, left = sd == 1, sd == 2
        out[k][right & lower] = RLL
        out[k][right & ~lower] = RML if grid.t[k] < t_hor else RUL
        out[k][left & lower] = LLL
        out[k][left & ~lower] = LUL
    return out


def fissure_distance(grid: Grid, an: Anatomy, bi: float, k: int) -> np.ndarray:
    """Distance (mm, along the normal) of slice ``k``'s rows from the oblique fissure (rows,)."""
    yfrac = np.clip((grid.y + bi) / (2.0 * bi), 0.0, 1.0)
    front, back = an.oblique
    slope = (back - front) * an.lung_height / (2.0 * bi)
    t_obl = (front + (back - front) * yfrac) * an.lung_height
    return np.abs(grid.t[k] - t_obl) / math.sqrt(1.0 + slope**2)


def table_mask(grid: Grid, an: Anatomy, style: int) -> tuple[np.ndarray, float]:
    """The couch under the patient (a plate, a curved cradle or a plate with a pad) and its HU."""
    X, Y = grid.x[None, :], grid.y[:, None]
    top = an.b + 4.0
    if style == 1:
        curve = top + 0.0015 * X**2
        mask = (Y > curve) & (Y < curve + 12.0) & (np.abs(X) < 1.3 * an.a)
    elif style == 2:
        mask = ((Y > top) & (Y < top + 6.0) & (np.abs(X) < 1.2 * an.a)) | (
            (Y > top + 30.0) & (Y < top + 40.0) & (np.abs(X) < 1.0 * an.a)
        )
    else:
        mask = (Y > top) & (Y < top + 9.0) & (np.abs(X) < 1.25 * an.a)
    return np.broadcast_to(mask, (grid.y.size, grid.x.size)), TABLE_HU[style]
