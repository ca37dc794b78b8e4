"""The anatomy of a phantom: patient parameters, the voxel grid, body, bones, mediastinum, lungs
and diaphragm, the airway and vessel trees, textures and scanner noise (model.phantoms.phantom
puts them together). HU values before texture and noise are the tissue constants below."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

# Tissue HU (before texture and noise).
AIR, FAT, MUSCLE, SOFT, BLOOD, LIVER, SPLEEN = -1000.0, -100.0, 45.0, 30.0, 40.0, 55.0, 40.0
MED_FAT, BONE_MARROW, BONE_CORTEX, DISC, CSF, TABLE, FLUID = -90.0, 230.0, 800.0, 80.0, 15.0, 150.0, 12.0


@dataclass(frozen=True)
class Anatomy:
    """Patient parameters (mm, HU) drawn from the patient seed."""

    a: float  # body half width
    b: float  # body half depth
    fat: float
    muscle: float
    rib: float  # rib layer thickness
    lung_height: float
    dome_right: float
    dome_left: float
    recess_tilt: float
    parenchyma: float
    gravity: float
    heart_scale: float
    heart_shift: float
    trachea_radius: float
    carina_fraction: float
    rib_pitch: float
    rib_drop: float
    rib_phase: float
    disc_phase: float
    stomach_gas: float  # radius, 0 = none
    body_dx: float
    body_dy: float


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    a = rng.uniform(135.0, 185.0)
    return Anatomy(
        a=a,
        b=a * rng.uniform(0.62, 0.76),
        fat=rng.uniform(6.0, 28.0),
        muscle=rng.uniform(7.0, 14.0),
        rib=rng.uniform(8.0, 11.0),
        lung_height=rng.uniform(0.95, 1.15) * a * 1.35,
        dome_right=rng.uniform(55.0, 80.0),
        dome_left=rng.uniform(40.0, 65.0),
        recess_tilt=rng.uniform(10.0, 25.0),
        parenchyma=rng.uniform(-875.0, -825.0),
        gravity=rng.uniform(15.0, 70.0),
        heart_scale=rng.uniform(0.9, 1.1),
        heart_shift=rng.uniform(-0.05, 0.08),
        trachea_radius=rng.uniform(8.0, 11.0),
        carina_fraction=rng.uniform(0.58, 0.66),
        rib_pitch=rng.uniform(24.0, 30.0),
        rib_drop=rng.uniform(45.0, 75.0),
        rib_phase=rng.uniform(0.0, 30.0),
        disc_phase=rng.uniform(0.0, 27.0),
        stomach_gas=rng.uniform(14.0, 30.0) if rng.random() < 0.5 else 0.0,
        body_dx=rng.uniform(-8.0, 8.0),
        body_dy=rng.uniform(-12.0, 12.0),
    )


@dataclass
class Grid:
    """Voxel centres in patient mm, relative to the body centre (x, y) and the scan start (t)."""

    x: np.ndarray  # (columns,)
    y: np.ndarray  # (rows,)
    t: np.ndarray  # (slices,) mm above the lowest lung point
    ps: float
    dz: float
    origin: tuple[float, float, float]  # patient (x, y, z) of voxel (0, 0, 0)
    body_center: tuple[float, float]  # patient (x, y) of the body centre


@dataclass
class Segment:
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    generation: int
    side: int  # +1 patient left, -1 patient right, 0 mediastinum


def make_grid(
    anatomy: Anatomy, rng: np.random.Generator, slices: int | None, rows: int, columns: int, slice_spacing: float | None
) -> tuple[Grid, float]:
    below = rng.uniform(10.0, 40.0)
    above = rng.uniform(10.0, 35.0)
    coverage = anatomy.lung_height + below + above
    n = int(rng.integers(80, 161)) if slices is None else int(slices)
    dz = float(slice_spacing) if slice_spacing is not None else coverage / n
    if dz <= 0:
        raise ValueError(f"slice_spacing must be > 0, got {slice_spacing}")
    thickness = dz * float(rng.choice([1.0, 1.0, 1.0, 1.25, 1.5]))
    fov = float(np.clip(2.0 * anatomy.a * rng.uniform(1.15, 1.4), 320.0, 500.0))
    ps = fov / max(rows, columns)
    # Lungs centred in the covered range when the spacing is given (partial coverage).
    t0 = 0.0 if slice_spacing is None else (below + anatomy.lung_height / 2.0) - dz * (n - 1) / 2.0
    t = t0 + dz * np.arange(n)  # mm from the scan start
    cx, cy = anatomy.body_dx, anatomy.body_dy + anatomy.b * 0.05
    x = (np.arange(columns) - (columns - 1) / 2.0) * ps - cx
    y = (np.arange(rows) - (rows - 1) / 2.0) * ps - cy
    table_z = -rng.uniform(150.0, 450.0)
    origin = (float(x[0] + cx), float(y[0] + cy), float(table_z + t0))
    # Anatomy is drawn in t = mm above the lowest lung point (which lies ``below`` mm above the scan start).
    grid = Grid(
        x=x.astype(np.float32),
        y=y.astype(np.float32),
        t=(t - below).astype(np.float32),
        ps=ps,
        dz=dz,
        origin=origin,
        body_center=(cx, cy),
    )
    return grid, thickness


def smoothstep(v: np.ndarray | float) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3.0 - 2.0 * v)


def static_anatomy(an: Anatomy, grid: Grid) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """HU of the solid anatomy (float32; lungs left at air) and the lung side map (int8: 0 none,
    1 right, 2 left). Painted slice by slice from 2D maps computed once."""
    X = grid.x[None, :]
    Y = grid.y[:, None]
    t = grid.t  # 0 = lowest lung point
    n, rows, cols = t.size, grid.y.size, grid.x.size
    H = an.lung_height
    u = t / H  # 0 at the lung base, 1 at the apex
    a, b = an.a, an.b
    taper = 1.0 - 0.22 * smoothstep((u - 0.95) / 0.25)  # neck and shoulders above the apices
    theta = np.arctan2(Y / b, X / a)
    ell = np.sqrt((X / a) ** 2 + (Y / b) ** 2).astype(np.float32)
    radius = (1.0 / np.sqrt((np.cos(theta) / a) ** 2 + (np.sin(theta) / b) ** 2)).astype(np.float32)
    ai = a - an.fat - an.muscle - an.rib
    bi = b - an.fat - an.muscle - an.rib
    wall_depth = an.fat + an.muscle + an.rib

    # Ribs: bands that descend from the spine to the front.
    phi = np.abs(np.angle(np.exp(1j * (np.arctan2(Y, X) - np.pi / 2))))  # 0 posterior, pi anterior
    zoff = (an.rib_drop * (1.0 - np.cos(phi)) / 2.0).astype(np.float32)
    rib_front = phi < np.pi - 0.45
    rib_width = 0.4 * an.rib_pitch
    # Spine.
    yv = bi - 4.0
    rv = 0.12 * a
    dv = np.sqrt(X**2 + (Y - yv) ** 2)
    yc = yv + rv + 8.0
    dc = np.sqrt(X**2 + (Y - yc) ** 2)
    vert, vert_core = dv < rv, dv < rv - 2.0
    posterior_elements = ((dc < 14.0) & (dc > 8.5)) | ((np.abs(X) < 4.0) & (Y > yc) & (Y < yc + 35.0))
    canal = dc <= 8.5
    # Mediastinum, heart, great vessels.
    w_med = 0.09 * ai + 10.0 + 14.0 * np.exp(-(((Y - yv) / 28.0) ** 2))
    medial = np.abs(X) < w_med
    hx, hy, hz = (0.12 + an.heart_shift) * ai, -0.28 * bi, 0.2 * H
    hax, hay, haz = 0.42 * ai * an.heart_scale, 0.45 * bi * an.heart_scale, 0.21 * H * an.heart_scale
    heart2d = (((X - hx) / hax) ** 2 + ((Y - hy) / hay) ** 2).astype(np.float32)
    heart_lim = 1.0 - ((t - hz) / haz) ** 2
    rim = (1.0 + 6.0 / min(hax, hay)) ** 2
    desc_aorta = np.sqrt((X - 0.16 * ai - 8.0) ** 2 + (Y - (yv - rv - 4.0)) ** 2) < 12.0
    asc_aorta = np.sqrt((X + 0.08 * ai) ** 2 + (Y + 0.25 * bi) ** 2) < 15.0
    arch_y = -0.25 * bi + (X + 0.08 * ai) / (0.24 * ai + 8.0) * (yv - rv - 4.0 + 0.25 * bi)
    arch = (np.abs(Y - arch_y) < 13.0) & (X > -0.08 * ai - 14.0) & (X < 0.16 * ai + 20.0)
    yt = 0.12 * bi
    carina_t = an.carina_fraction * H
    dt = np.sqrt(X**2 + (Y - yt) ** 2)
    trachea_wall, trachea_lumen = dt < an.trachea_radius + 2.0, dt < an.trachea_radius
    oesophagus = np.sqrt((X - 6.0) ** 2 + (Y - (yt + an.trachea_radius + 9.0)) ** 2) < 7.0
    front = -(b - an.fat - an.muscle)
    sternum = (np.abs(X) < 14.0) & (Y > front - 2.0) & (Y < front + 9.0)
    table_top = b + 4.0
    table = (Y > table_top) & (Y < table_top + 9.0) & (np.abs(X) < 1.25 * a)
    right_half = np.broadcast_to(X < 0, (rows, cols))
    gas2d = ((X - 0.45 * ai) ** 2 + (Y + 0.25 * bi) ** 2).astype(np.float32)
    gas_t = an.dome_left * 0.55
    # Lungs: per side an ellipse (shrinking towards the apex), inside the thorax, lateral to the
    # mediastinum, above the diaphragm dome (higher on the right, deepest in the posterior recess).
    domes, lateral = {}, {}
    for s in (-1, 1):
        cx = s * ai * 0.5
        dome_h = an.dome_right if s < 0 else an.dome_left
        bump = np.clip(1.0 - ((X - cx) / (ai * 0.55)) ** 2 - ((Y + 0.05 * bi) / (bi * 0.95)) ** 2, 0.0, 1.0)
        domes[s] = (an.recess_tilt * (1.0 - Y / bi) / 2.0 + dome_h * bump).astype(np.float32)
        lateral[s] = s * X > w_med
    q = np.where(u < 0.62, 1.0, np.sqrt(np.clip(1.0 - ((u - 0.62) / 0.38) ** 2, 0.0, 1.0)))
    disc = np.mod(t - an.disc_phase, 27.0) < 5.0

    labels = np.empty((n, rows, cols), dtype=np.float32)
    side = np.zeros((n, rows, cols), dtype=np.int8)
    gas_any = False
    for k in range(n):
        hu = labels[k]
        sd = side[k]
        depth = radius * (taper[k] - ell)
        body = depth > 0
        thorax = depth > wall_depth
        hu.fill(AIR)
        hu[body] = FAT
        hu[depth > an.fat] = MUSCLE
        hu[thorax] = SOFT
        if -0.1 < u[k] < 1.08:
            rib_depth = depth - (an.fat + an.muscle * 0.6)
            band = np.mod(t[k] + zoff - an.rib_phase, an.rib_pitch)
            ribs = (rib_depth > 0) & (rib_depth < an.rib) & (band < rib_width) & rib_front
            hu[ribs] = BONE_MARROW
            cortex = ribs & ((band < 1.6) | (band > rib_width - 1.6) | (rib_depth < 1.8) | (rib_depth > an.rib - 1.8))
            hu[cortex] = BONE_CORTEX
        if disc[k]:
            hu[vert] = DISC
        else:
            hu[vert] = BONE_CORTEX
            hu[vert_core] = BONE_MARROW
        hu[posterior_elements & body] = BONE_CORTEX * 0.7
        hu[canal] = CSF
        lungs = None
        if -0.05 < u[k] < 1.0 and q[k] > 0:
            ax_, ay_ = ai * 0.53 * q[k], bi * 0.93 * q[k]
            cy_ = 0.06 * bi + (1.0 - q[k]) * 0.25 * bi
            for s, code in ((-1, 1), (1, 2)):
                cxk = s * ai * (0.5 + (1.0 - q[k]) * 0.05)
                inside = (
                    (((X - cxk) / ax_) ** 2 + ((Y - cy_) / ay_) ** 2 < 1.0) & thorax & lateral[s] & (t[k] > domes[s])
                )
                sd[inside] = code
            lungs = sd > 0
        not_lung = thorax if lungs is None else thorax & ~lungs
        hu[not_lung & medial] = MED_FAT
        if heart_lim[k] > 0:
            hu[(heart2d < heart_lim[k] * rim) & thorax] = FAT
            heart = (heart2d < heart_lim[k]) & thorax
            hu[heart] = BLOOD
            sd[heart2d < heart_lim[k] * rim] = 0
        vessels = []
        if u[k] < 0.66:
            vessels.append(desc_aorta)
        if 0.3 < u[k] < 0.64:
            vessels.append(asc_aorta)
        if 0.6 < u[k] < 0.68:
            vessels.append(arch)
        for m in vessels:
            m = m & thorax
            hu[m] = BLOOD
            sd[m] = 0
        if u[k] < 0.45:
            abdomen = not_lung & ~medial & (hu == SOFT)
            hu[abdomen & right_half] = LIVER
            hu[abdomen & ~right_half] = SPLEEN
            if an.stomach_gas > 0 and abs(t[k] - gas_t) * 1.414 < an.stomach_gas:
                gas = abdomen & (gas2d < an.stomach_gas**2 - 2.0 * (t[k] - gas_t) ** 2)
                hu[gas] = AIR
                gas_any = gas_any or bool(gas.any())
        if t[k] > carina_t:
            hu[trachea_wall & body] = SOFT + 20.0
            hu[trachea_lumen & body] = AIR
            sd[trachea_wall] = 0
        if u[k] > 0.25:
            hu[oesophagus & not_lung] = SOFT + 10.0
        if 0.3 < u[k] < 0.92:
            hu[sternum] = BONE_MARROW + 150.0
        hu[table & ~body] = TABLE
        sd[~thorax] = 0
    # Field of view: the reconstruction circle inscribed in the matrix.
    jj = (np.arange(cols) - (cols - 1) / 2.0)[None, :]
    ii = (np.arange(rows) - (rows - 1) / 2.0)[:, None]
    fov = (jj**2 + ii**2) <= (max(rows, cols) / 2.0) ** 2
    ctx = {
        "ai": ai,
        "bi": bi,
        "yv": yv,
        "rv": rv,
        "w_med0": 0.09 * ai + 10.0,
        "yt": yt,
        "carina_t": carina_t,
        "H": H,
        "fov": fov,
        "stomach_gas": gas_any,
    }
    return labels, side, ctx


# -- textures and noise -----------------------------------------------------------------------------


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


def ct_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Correlated scanner noise: white noise at half resolution, bilinearly upsampled (a grain of
    about two pixels, like filtered back-projection), scaled to ``sigma`` HU."""
    n, rows, cols = shape
    small = rng.standard_normal((n, 1, max(2, rows // 2), max(2, cols // 2)), dtype=np.float32)
    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(small), size=(rows, cols), mode="bilinear", align_corners=False)[
            :, 0
        ].numpy()
    sample = out[:, ::5, ::5]
    out *= sigma / max(float(sample.std()), 1e-6)
    return out


# -- airways and vessels ----------------------------------------------------------------------------


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
