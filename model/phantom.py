"""Synthetic chest CT phantoms with COVID-19, CAP or no pneumonia, and their ground truth.

A phantom proves that the pipeline works and localises what it classifies; it proves nothing
clinical (no real patient data can be shipped or fetched here). Not for clinical use.

Geometry: axial head-first-supine, Image Orientation (Patient) 1\\0\\0\\0\\1\\0, so x goes to the
patient's left along a row, y to posterior down a column, and the slices are sorted ascending in z
(feet -> head), as :class:`model.io.Volume` sorts them. Anatomy (method.md): body outline with
subcutaneous fat and muscle, ribs, sternum and spine with discs, mediastinal fat with heart,
aorta, trachea, main bronchi and oesophagus, two lungs (parenchyma about -850 HU, denser towards
the back) above diaphragm domes, pulmonary vessels and bronchi that branch and thin towards the
periphery, liver/spleen and sometimes a stomach gas bubble below the diaphragm, a table, and
correlated scanner noise.

Disease signs, drawn only by the class:

- covid: bilateral multifocal rounded ground-glass opacities (-700..-400 HU) placed subpleurally,
  with posterior and lower predominance; some with crazy paving or a consolidated core.
- cap: one or two (mostly unilateral) segmental/lobar consolidations (-80..+40 HU) centred on a
  segmental bronchus (so air bronchograms show), deeper in the lung, with a thin ground-glass
  rim; pleural effusion in about a third.
- normal: no infection.

Everything that is not a sign is drawn from the same distributions for every class: patient size,
fat, parenchyma density and its gravity gradient, field of view, slice spacing and thickness,
noise level, kVp, table, stomach gas and the incidental findings (small solid nodules,
emphysema-like low-density clusters), so that no shortcut separates the classes.

Determinism: one seed gives the same phantom. The anatomy comes from ``patient_seed`` (default:
the seed), so two phantoms with one patient seed are one "patient" scanned twice.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from scipy import ndimage as ndi
from torch.nn import functional as F

from dicom_node.uids import clean_uid, derived_uid
from model.result import CLASSES

KINDS: tuple[str, ...] = CLASSES  # ("covid", "cap", "normal")
ORIENTATION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
MIN_HU, MAX_HU = -1024.0, 3071.0

# Tissue HU (before texture and noise).
_AIR, _FAT, _MUSCLE, _SOFT, _BLOOD, _LIVER, _SPLEEN = -1000.0, -100.0, 45.0, 30.0, 40.0, 55.0, 40.0
_MED_FAT, _BONE_MARROW, _BONE_CORTEX, _DISC, _CSF, _TABLE, _FLUID = -90.0, 230.0, 800.0, 80.0, 15.0, 150.0, 12.0


@dataclass
class Phantom:
    """A synthetic chest CT and its ground truth, slices ascending along z (feet -> head)."""

    kind: str
    seed: int
    patient_seed: int
    hu: np.ndarray  # float32 (slices, rows, columns), clipped to [-1024, 3071]
    lung_mask: np.ndarray  # bool: anatomical lungs (lesions and intrapulmonary vessels included; trachea, main bronchi, effusion excluded)
    lesion_mask: np.ndarray  # bool: the infection (GGO / consolidation); empty for normal
    spacing: tuple[float, float, float]  # (slice distance, row spacing, column spacing) mm
    slice_thickness: float
    image_positions: np.ndarray  # (slices, 3) mm
    orientation: tuple[float, ...] = ORIENTATION
    noise_sigma: float = 0.0
    kvp: float = 120.0
    findings: list[dict[str, Any]] = field(default_factory=list)  # lesions and incidental findings, for people

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.hu.shape)  # type: ignore[return-value]

    @property
    def lesion_fraction(self) -> float:
        """Lesion volume / lung volume."""
        lung = int(np.count_nonzero(self.lung_mask))
        return float(np.count_nonzero(self.lesion_mask & self.lung_mask)) / lung if lung else 0.0

    def describe(self) -> dict[str, Any]:
        """JSON-able metadata (no arrays)."""
        return {
            "kind": self.kind,
            "seed": self.seed,
            "patient_seed": self.patient_seed,
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "slice_thickness": self.slice_thickness,
            "noise_sigma": round(self.noise_sigma, 2),
            "kvp": self.kvp,
            "lesion_fraction": round(self.lesion_fraction, 5),
            "findings": self.findings,
            "notice": "Synthetic phantom, not a patient. Not for clinical use.",
        }


@dataclass(frozen=True)
class _Anatomy:
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


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    a = rng.uniform(135.0, 185.0)
    return _Anatomy(
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
class _Grid:
    """Voxel centres in patient mm, relative to the body centre (x, y) and the scan start (t)."""

    x: np.ndarray  # (columns,)
    y: np.ndarray  # (rows,)
    t: np.ndarray  # (slices,) mm above the lowest lung point
    ps: float
    dz: float
    origin: tuple[float, float, float]  # patient (x, y, z) of voxel (0, 0, 0)
    body_center: tuple[float, float]  # patient (x, y) of the body centre


@dataclass
class _Segment:
    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    generation: int
    side: int  # +1 patient left, -1 patient right, 0 mediastinum


# -- the phantom ------------------------------------------------------------------------------------


def make_phantom(
    kind: str,
    *,
    seed: int = 0,
    slices: int | None = None,
    rows: int = 512,
    columns: int = 512,
    slice_spacing: float | None = None,
    patient_seed: int | None = None,
    noise: bool = True,
) -> Phantom:
    """A synthetic chest CT of class ``kind`` (see the module docstring).

    ``slices``: number of slices (default: drawn from 80..160). ``slice_spacing``: distance between
    slices in mm; by default the slices cover the whole chest (lung apices to below the bases), so
    the spacing follows from the count (about 0.6-5 mm for 60-500 slices; coarser for the small
    counts of unit tests). The field of view is drawn per phantom; the pixel spacing is the field
    of view over the matrix size, so small matrices give the same anatomy at lower resolution.
    ``noise=False`` leaves out scanner noise (for tests of geometry).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if rows < 32 or columns < 32:
        raise ValueError(f"rows and columns must be >= 32, got {rows}x{columns}")
    if slices is not None and slices < 4:
        raise ValueError(f"slices must be >= 4, got {slices}")
    patient_seed = seed if patient_seed is None else patient_seed
    anatomy = _draw_anatomy(np.random.default_rng([patient_seed, 1]))
    scan_rng = np.random.default_rng([seed, 2])
    lesion_rng = np.random.default_rng([seed, 3, KINDS.index(kind)])
    extra_rng = np.random.default_rng([seed, 4])

    grid, thickness = _make_grid(anatomy, scan_rng, slices, rows, columns, slice_spacing)
    labels_hu, lung_side, ctx = _static_anatomy(anatomy, grid)
    hu = labels_hu
    lung = lung_side > 0
    # Parenchyma: base density, gravity gradient (dependent lung is denser), soft texture.
    texture = _smooth_noise(hu.shape, extra_rng, cell_mm=(18.0, 12.0, 12.0), spacing=(grid.dz, grid.ps, grid.ps))
    yy = np.broadcast_to((grid.y / ctx["bi"]).astype(np.float32)[None, :, None], hu.shape)
    hu[lung] = anatomy.parenchyma + anatomy.gravity * np.clip(yy[lung], -1.0, 1.0) * 0.5 + anatomy.gravity * 0.25 + 12.0 * texture[lung]

    findings: list[dict[str, Any]] = []
    vessels, bronchi = _airway_vessel_trees(anatomy, grid, ctx, lung_side, extra_rng)
    depth = _coarse_depth(lung_side, grid)

    effusion = np.zeros(hu.shape, dtype=bool)
    lesion_weight = np.zeros(hu.shape, dtype=np.float32)
    if kind == "covid":
        _covid_lesions(hu, lung_side, depth, grid, ctx, lesion_rng, lesion_weight, findings)
        if lesion_rng.random() < 0.05:
            effusion |= _effusion(lung_side, grid, ctx, lesion_rng, int(lesion_rng.choice([-1, 1])), findings)
    elif kind == "cap":
        sides = _cap_lesions(hu, lung_side, depth, grid, ctx, bronchi, lesion_rng, lesion_weight, findings)
        if lesion_rng.random() < 0.35:
            for s in sides if lesion_rng.random() < 0.3 else sides[:1]:
                effusion |= _effusion(lung_side, grid, ctx, lesion_rng, s, findings)
    _incidental(hu, lung_side, depth, grid, ctx, extra_rng, findings)

    # Vessels and bronchi go over the parenchyma and the lesions: vessels stay visible in
    # ground glass, bronchial lumen stays air in consolidation (air bronchograms).
    for seg in vessels:
        _paint_segment(hu, seg, grid, _BLOOD, lung if seg.side else None, wall=None)
    for seg in bronchi:
        _paint_segment(hu, seg, grid, _AIR, lung if seg.side else None, wall=max(0.6, 0.22 * seg.r0))
    if effusion.any():
        fluid = effusion & lung
        hu[fluid] = _FLUID + 6.0 * texture[fluid]
        lung &= ~effusion
    lesion_mask = (lesion_weight > 0.5) & lung

    sigma = float(scan_rng.uniform(10.0, 30.0) * math.sqrt(2.5 / max(thickness, 0.5)))
    sigma = float(np.clip(sigma, 6.0, 60.0))
    if noise:
        hu += _ct_noise(hu.shape, scan_rng, sigma)
    hu[:, ~ctx["fov"]] = MIN_HU
    np.clip(hu, MIN_HU, MAX_HU, out=hu)
    n = hu.shape[0]
    positions = np.stack(
        [np.full(n, grid.origin[0]), np.full(n, grid.origin[1]), grid.origin[2] + grid.dz * np.arange(n)], axis=1
    )
    return Phantom(
        kind=kind,
        seed=int(seed),
        patient_seed=int(patient_seed),
        hu=hu,
        lung_mask=lung,
        lesion_mask=lesion_mask,
        spacing=(float(grid.dz), float(grid.ps), float(grid.ps)),
        slice_thickness=float(thickness),
        image_positions=positions,
        noise_sigma=sigma if noise else 0.0,
        kvp=float(scan_rng.choice([100.0, 120.0, 120.0, 140.0])),
        findings=findings,
    )


def _make_grid(
    anatomy: _Anatomy, rng: np.random.Generator, slices: int | None, rows: int, columns: int, slice_spacing: float | None
) -> tuple[_Grid, float]:
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
    grid = _Grid(x=x.astype(np.float32), y=y.astype(np.float32), t=(t - below).astype(np.float32), ps=ps, dz=dz, origin=origin, body_center=(cx, cy))
    return grid, thickness


def _smoothstep(v: np.ndarray | float) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3.0 - 2.0 * v)


def _static_anatomy(an: _Anatomy, grid: _Grid) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """HU of the solid anatomy (float32; lungs left at air) and the lung side map (int8: 0 none,
    1 right, 2 left). Painted slice by slice from 2D maps computed once."""
    X = grid.x[None, :]
    Y = grid.y[:, None]
    t = grid.t  # 0 = lowest lung point
    n, rows, cols = t.size, grid.y.size, grid.x.size
    H = an.lung_height
    u = t / H  # 0 at the lung base, 1 at the apex
    a, b = an.a, an.b
    taper = 1.0 - 0.22 * _smoothstep((u - 0.95) / 0.25)  # neck and shoulders above the apices
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
        lateral[s] = (s * X > w_med)
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
        hu.fill(_AIR)
        hu[body] = _FAT
        hu[depth > an.fat] = _MUSCLE
        hu[thorax] = _SOFT
        if -0.1 < u[k] < 1.08:
            rib_depth = depth - (an.fat + an.muscle * 0.6)
            band = np.mod(t[k] + zoff - an.rib_phase, an.rib_pitch)
            ribs = (rib_depth > 0) & (rib_depth < an.rib) & (band < rib_width) & rib_front
            hu[ribs] = _BONE_MARROW
            cortex = ribs & ((band < 1.6) | (band > rib_width - 1.6) | (rib_depth < 1.8) | (rib_depth > an.rib - 1.8))
            hu[cortex] = _BONE_CORTEX
        if disc[k]:
            hu[vert] = _DISC
        else:
            hu[vert] = _BONE_CORTEX
            hu[vert_core] = _BONE_MARROW
        hu[posterior_elements & body] = _BONE_CORTEX * 0.7
        hu[canal] = _CSF
        lungs = None
        if -0.05 < u[k] < 1.0 and q[k] > 0:
            ax_, ay_ = ai * 0.53 * q[k], bi * 0.93 * q[k]
            cy_ = 0.06 * bi + (1.0 - q[k]) * 0.25 * bi
            for s, code in ((-1, 1), (1, 2)):
                cxk = s * ai * (0.5 + (1.0 - q[k]) * 0.05)
                inside = (((X - cxk) / ax_) ** 2 + ((Y - cy_) / ay_) ** 2 < 1.0) & thorax & lateral[s] & (t[k] > domes[s])
                sd[inside] = code
            lungs = sd > 0
        not_lung = thorax if lungs is None else thorax & ~lungs
        hu[not_lung & medial] = _MED_FAT
        if heart_lim[k] > 0:
            hu[(heart2d < heart_lim[k] * rim) & thorax] = _FAT
            heart = (heart2d < heart_lim[k]) & thorax
            hu[heart] = _BLOOD
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
            hu[m] = _BLOOD
            sd[m] = 0
        if u[k] < 0.45:
            abdomen = not_lung & ~medial & (hu == _SOFT)
            hu[abdomen & right_half] = _LIVER
            hu[abdomen & ~right_half] = _SPLEEN
            if an.stomach_gas > 0 and abs(t[k] - gas_t) * 1.414 < an.stomach_gas:
                gas = abdomen & (gas2d < an.stomach_gas**2 - 2.0 * (t[k] - gas_t) ** 2)
                hu[gas] = _AIR
                gas_any = gas_any or bool(gas.any())
        if t[k] > carina_t:
            hu[trachea_wall & body] = _SOFT + 20.0
            hu[trachea_lumen & body] = _AIR
            sd[trachea_wall] = 0
        if u[k] > 0.25:
            hu[oesophagus & not_lung] = _SOFT + 10.0
        if 0.3 < u[k] < 0.92:
            hu[sternum] = _BONE_MARROW + 150.0
        hu[table & ~body] = _TABLE
        sd[~thorax] = 0
    # Field of view: the reconstruction circle inscribed in the matrix.
    jj = (np.arange(cols) - (cols - 1) / 2.0)[None, :]
    ii = (np.arange(rows) - (rows - 1) / 2.0)[:, None]
    fov = (jj**2 + ii**2) <= (max(rows, cols) / 2.0) ** 2
    ctx = {"ai": ai, "bi": bi, "yv": yv, "rv": rv, "w_med0": 0.09 * ai + 10.0, "yt": yt, "carina_t": carina_t, "H": H, "fov": fov, "stomach_gas": gas_any}
    return labels, side, ctx


# -- textures and noise -----------------------------------------------------------------------------


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, cell_mm: tuple[float, float, float], spacing: tuple[float, float, float]) -> np.ndarray:
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


def _ct_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Correlated scanner noise: white noise at half resolution, bilinearly upsampled (a grain of
    about two pixels, like filtered back-projection), scaled to ``sigma`` HU."""
    n, rows, cols = shape
    small = rng.standard_normal((n, 1, max(2, rows // 2), max(2, cols // 2)), dtype=np.float32)
    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(small), size=(rows, cols), mode="bilinear", align_corners=False)[:, 0].numpy()
    sample = out[:, ::5, ::5]
    out *= sigma / max(float(sample.std()), 1e-6)
    return out


# -- airways and vessels ----------------------------------------------------------------------------


def _to_index(grid: _Grid, p: np.ndarray) -> np.ndarray:
    """(t, y, x) mm -> fractional (k, i, j) voxel index."""
    return np.array([(p[0] - grid.t[0]) / grid.dz, (p[1] - grid.y[0]) / grid.ps, (p[2] - grid.x[0]) / grid.ps])


def _build_tree(p0: np.ndarray, pts: np.ndarray, r: float, gen: int, side: int, out: list[_Segment]) -> None:
    """Binary tree from ``p0`` to the points: split along the principal axis, radius x0.78 per
    generation, so that branches thin towards the periphery."""
    if len(pts) == 1 or r < 0.7:
        target = pts.mean(axis=0)
        out.append(_Segment(p0, target, r, max(0.4, r * 0.7), gen, side))
        return
    c = pts.mean(axis=0)
    p1 = p0 + (0.38 if gen == 0 else 0.5) * (c - p0)
    out.append(_Segment(p0, p1, r, r * 0.92, gen, side))
    d = pts - c
    _, vecs = np.linalg.eigh(d.T @ d)
    order = np.argsort(d @ vecs[:, -1], kind="stable")
    half = len(pts) // 2
    _build_tree(p1, pts[order[:half]], r * 0.78, gen + 1, side, out)
    _build_tree(p1, pts[order[half:]], r * 0.78, gen + 1, side, out)


def _airway_vessel_trees(
    an: _Anatomy, grid: _Grid, ctx: dict[str, Any], lung_side: np.ndarray, rng: np.random.Generator
) -> tuple[list[_Segment], list[_Segment]]:
    """Segments (t, y, x in mm) of the pulmonary vessels and of the bronchi (main + intrapulmonary)."""
    vessels: list[_Segment] = []
    bronchi: list[_Segment] = []
    ct, yt, w0, bi = ctx["carina_t"], ctx["yt"], ctx["w_med0"], ctx["bi"]
    carina = np.array([ct, yt, 0.0])
    n_points = 192
    for s, code in ((-1, 1), (1, 2)):
        hilum_b = np.array([ct - 22.0, yt - 2.0, s * (w0 + 6.0)])
        hilum_v = np.array([ct - 32.0, -0.04 * bi, s * (w0 + 8.0)])
        bronchi.append(_Segment(carina, hilum_b, an.trachea_radius * 0.72, an.trachea_radius * 0.62, 0, 0))
        vessels.append(_Segment(np.array([ct - 30.0, -0.18 * bi, s * 6.0]), hilum_v, 10.0, 8.0, 0, 0))
        idx = np.flatnonzero(lung_side.reshape(-1) == code)
        if idx.size < n_points:
            continue
        pick = rng.choice(idx, size=n_points, replace=False)
        k, i, j = np.unravel_index(pick, lung_side.shape)
        pts = np.stack([grid.t[k], grid.y[i], grid.x[j]], axis=1).astype(np.float64)
        pts += rng.uniform(-0.5, 0.5, pts.shape) * np.array([grid.dz, grid.ps, grid.ps])
        tree: list[_Segment] = []
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
            bronchi.append(_Segment(seg.p0 + shift, seg.p1 + shift, 0.75 * seg.r0, 0.75 * seg.r1, seg.generation, s))
            if root is None:
                root = seg.p0 + shift
        if root is not None:  # join the main bronchus to its tree
            bronchi.append(_Segment(hilum_b, root, an.trachea_radius * 0.62, 5.0, 1, 0))
    return vessels, bronchi


def _paint_segment(hu: np.ndarray, seg: _Segment, grid: _Grid, value: float, restrict: np.ndarray | None, wall: float | None) -> None:
    """Blend a tapered tube into ``hu`` with one-pixel partial volume (and a soft-tissue wall)."""
    reach = max(seg.r0, seg.r1) + (wall or 0.0) + grid.ps
    lo = np.minimum(seg.p0, seg.p1) - reach
    hi = np.maximum(seg.p0, seg.p1) + reach
    i0 = np.floor(_to_index(grid, lo)).astype(int)
    i1 = np.ceil(_to_index(grid, hi)).astype(int) + 1
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
        box += (_SOFT - box) * occ
    occ = np.clip((r - dist) / grid.ps + 0.5, 0.0, 1.0)
    if keep is not None:
        occ = occ * keep
    box += (value - box) * occ


# -- lesions ----------------------------------------------------------------------------------------


@dataclass
class _Depth:
    """Distance (mm) to the lung surface on a coarse grid, with the strides used."""

    depth: np.ndarray
    side: np.ndarray
    stride: tuple[int, int, int]


def _coarse_depth(lung_side: np.ndarray, grid: _Grid) -> _Depth:
    fz = max(1, int(round(5.0 / grid.dz)))
    fxy = max(1, int(round(4.0 / grid.ps)))
    side = lung_side[::fz, ::fxy, ::fxy]
    depth = ndi.distance_transform_edt(side > 0, sampling=(grid.dz * fz, grid.ps * fxy, grid.ps * fxy)).astype(np.float32)
    return _Depth(depth=depth, side=side, stride=(fz, fxy, fxy))


def _pick_point(
    dp: _Depth, grid: _Grid, ctx: dict[str, Any], rng: np.random.Generator, code: int | None, dmin: float, dmax: float,
    posterior: float = 0.0, lower: float = 0.0, upper_only: bool = False,
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
    jitter = rng.uniform(-0.5, 0.5, 3) * np.array([grid.dz * dp.stride[0], grid.ps * dp.stride[1], grid.ps * dp.stride[2]])
    return np.array([t[c], y[c], x[c]]) + jitter


def _blob_weight(
    grid: _Grid, shape: tuple[int, int, int], center: np.ndarray, axes: np.ndarray, edge_mm: float, rng: np.random.Generator, irregular: float = 0.22
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Soft (0..1) weight of an irregular ellipsoid, on its bounding box."""
    reach = axes * (1.0 + irregular * 2.5) + edge_mm
    i0 = np.maximum(np.floor(_to_index(grid, center - reach)).astype(int), 0)
    i1 = np.minimum(np.ceil(_to_index(grid, center + reach)).astype(int) + 1, np.array(shape))
    if np.any(i1 <= i0):
        return None
    box = (slice(i0[0], i1[0]), slice(i0[1], i1[1]), slice(i0[2], i1[2]))
    T = (grid.t[box[0]] - center[0])[:, None, None] / axes[0]
    Y = (grid.y[box[1]] - center[1])[None, :, None] / axes[1]
    X = (grid.x[box[2]] - center[2])[None, None, :] / axes[2]
    rho = np.sqrt(T**2 + Y**2 + X**2)
    bshape = tuple(int(b - a) for a, b in zip(i0, i1))
    nz = _smooth_noise(bshape, rng, cell_mm=(float(axes.mean()) * 0.6,) * 3, spacing=(grid.dz, grid.ps, grid.ps))
    w = np.clip((1.0 + irregular * nz - rho) * float(axes.mean()) / edge_mm + 0.5, 0.0, 1.0).astype(np.float32)
    return box, w


def _covid_lesions(
    hu: np.ndarray, lung_side: np.ndarray, dp: _Depth, grid: _Grid, ctx: dict[str, Any], rng: np.random.Generator,
    lesion_weight: np.ndarray, findings: list[dict[str, Any]],
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
        tex = _smooth_noise(w.shape, rng, cell_mm=(4.0, 4.0, 4.0), spacing=(grid.dz, grid.ps, grid.ps))
        region = hu[box]
        region += (target + 30.0 * tex - region) * w
        pattern = "ground-glass opacity"
        if rng.random() < 0.3:
            lines = _smooth_noise(w.shape, rng, cell_mm=(6.0, 6.0, 6.0), spacing=(grid.dz, grid.ps, grid.ps))
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
        findings.append({"type": pattern, "side": "right" if code == 1 else "left", "center_mm": [round(float(v), 1) for v in center], "radius_mm": round(float(radius), 1), "hu": round(float(target))})


def _cap_lesions(
    hu: np.ndarray, lung_side: np.ndarray, dp: _Depth, grid: _Grid, ctx: dict[str, Any], bronchi: list[_Segment],
    rng: np.random.Generator, lesion_weight: np.ndarray, findings: list[dict[str, Any]],
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
            idx = np.round(_to_index(grid, b.p1) / np.array(dp.stride)).astype(int)
            if np.all(idx >= 0) and np.all(idx < np.array(dp.depth.shape)) and dp.side[tuple(idx)] == code and 18.0 <= dp.depth[tuple(idx)] <= 50.0:
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
        tex = _smooth_noise(w.shape, rng, cell_mm=(5.0, 5.0, 5.0), spacing=(grid.dz, grid.ps, grid.ps))
        region += (target + 15.0 * tex - region) * core_w
        np.maximum(lesion_weight[box], w, out=lesion_weight[box])
        findings.append({"type": "consolidation with air bronchograms", "side": "right" if code == 1 else "left", "center_mm": [round(float(v), 1) for v in center], "radius_mm": round(float(radius), 1), "hu": round(float(target))})
    return sides


def _effusion(lung_side: np.ndarray, grid: _Grid, ctx: dict[str, Any], rng: np.random.Generator, s: int, findings: list[dict[str, Any]]) -> np.ndarray:
    """A dependent (posterior, basal) pleural effusion on side ``s``: a meniscus along the back."""
    code = 1 if s < 0 else 2
    d0 = rng.uniform(18.0, 45.0)
    h = rng.uniform(50.0, 110.0)
    depth = d0 * np.clip(1.0 - grid.t / h, 0.0, 1.0)
    out = (lung_side == code) & (grid.y[None, :, None] > (ctx["bi"] - depth)[:, None, None])
    findings.append({"type": "pleural effusion", "side": "right" if code == 1 else "left", "depth_mm": round(float(d0), 1), "height_mm": round(float(h), 1)})
    return out


def _incidental(
    hu: np.ndarray, lung_side: np.ndarray, dp: _Depth, grid: _Grid, ctx: dict[str, Any], rng: np.random.Generator, findings: list[dict[str, Any]]
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
            findings.append({"type": "small solid nodule (incidental)", "center_mm": [round(float(v), 1) for v in c], "radius_mm": round(float(r), 1)})
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


# -- DICOM ------------------------------------------------------------------------------------------

TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": str(ExplicitVRLittleEndian),
    "implicit": str(ImplicitVRLittleEndian),
    "deflate": str(DeflatedExplicitVRLittleEndian),
    "rle": str(RLELossless),
    "jpeg-ls": str(JPEGLSLossless),
    "jpeg2000": str(JPEG2000Lossless),
}
_COMPRESSED = {str(RLELossless), str(JPEGLSLossless), str(JPEG2000Lossless)}
MASKS_SUFFIX = ".masks.npz"


def transfer_syntax_uid(name: str) -> str:
    """A key of :data:`TRANSFER_SYNTAXES` (``explicit``, ``rle``, ...) or one of their UIDs."""
    if name in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[name]
    if name in TRANSFER_SYNTAXES.values():
        return name
    raise ValueError(f"transfer syntax {name!r} is not one of {', '.join(TRANSFER_SYNTAXES)} (or their UIDs)")


def masks_path(series_dir: Path | str) -> Path:
    """Where :func:`write_phantom_series` puts the ground truth of ``series_dir``: next to the
    folder, ``<folder name>.masks.npz``, so that the series folder holds only DICOM files."""
    series_dir = Path(series_dir)
    return series_dir.parent / f"{series_dir.name}{MASKS_SUFFIX}"


@dataclass
class PhantomTruth:
    """Ground truth written beside a phantom series (slices in :class:`model.io.Volume` order)."""

    lung_mask: np.ndarray
    lesion_mask: np.ndarray
    meta: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])


def read_phantom_truth(series_dir: Path | str) -> PhantomTruth:
    """The masks and metadata that :func:`write_phantom_series` wrote for ``series_dir``."""
    path = masks_path(series_dir)
    with np.load(path) as data:
        return PhantomTruth(lung_mask=data["lung_mask"].astype(bool), lesion_mask=data["lesion_mask"].astype(bool), meta=json.loads(str(data["meta"])))


def write_phantom_series(
    phantom_or_kind: Phantom | str,
    out_dir: Path | str,
    *,
    seed: int | None = None,
    transfer_syntax: str = "explicit",
    signed: bool | None = None,
    reverse_instance_numbers: bool | None = None,
    shuffle_file_names: bool = True,
    multiframe: bool = False,
    per_frame_rescale: bool | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_number: int = 1,
    write_masks: bool = True,
    **phantom_kwargs: Any,
) -> Path:
    """Write a phantom as a CT Image Storage series (one file per slice) or, with ``multiframe``,
    one Enhanced CT Image Storage file; returns ``out_dir``.

    ``phantom_or_kind``: a :class:`Phantom`, or a kind for :func:`make_phantom` (``seed`` and
    ``phantom_kwargs`` such as ``slices``, ``rows``, ``columns`` go to it). Options left at None are
    drawn from the seed: ``signed`` (int16 with intercept 0, or 12-bit unsigned with intercept
    -1024), ``reverse_instance_numbers`` (instance 1 at the head end instead of the feet end) and,
    for multi-frame, ``per_frame_rescale`` (Pixel Value Transformation per frame instead of shared).
    File names are random (from the seed) unless ``shuffle_file_names`` is False. UIDs come from
    :func:`dicom_node.uids.derived_uid` of the seed and the image content, so one seed gives one
    series. ``transfer_syntax``: see :data:`TRANSFER_SYNTAXES` (all lossless).

    The ground truth goes to :func:`masks_path` (``<out_dir>.masks.npz`` beside the folder, arrays
    ``lung_mask`` and ``lesion_mask`` in the sorted slice order of :class:`model.io.Volume`, and
    ``meta`` JSON); read it with :func:`read_phantom_truth`.
    """
    if isinstance(phantom_or_kind, Phantom):
        if phantom_kwargs:
            raise TypeError(f"phantom options {sorted(phantom_kwargs)} given with a ready phantom")
        phantom = phantom_or_kind
        seed = phantom.seed if seed is None else seed
    else:
        seed = 0 if seed is None else seed
        phantom = make_phantom(phantom_or_kind, seed=seed, **phantom_kwargs)
    ts = transfer_syntax_uid(transfer_syntax)
    rng = np.random.default_rng([seed, 5])
    signed = bool(rng.random() < 0.5) if signed is None else signed
    reverse = bool(rng.random() < 0.5) if reverse_instance_numbers is None else reverse_instance_numbers
    per_frame = bool(rng.random() < 0.5) if per_frame_rescale is None else per_frame_rescale
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    n = phantom.shape[0]
    stored, intercept, bits = _encode(phantom.hu, signed)
    content = f"{phantom.kind}|{phantom.seed}|{phantom.patient_seed}|{phantom.shape}|{phantom.spacing}|{phantom.noise_sigma:.4f}"
    study = clean_uid(study_uid) if study_uid else derived_uid("phantom", "study", content)
    series = derived_uid("phantom", "series", content, "enhanced" if multiframe else "single")
    for_uid = derived_uid("phantom", "frame-of-reference", content)
    order = list(range(n - 1, -1, -1)) if reverse else list(range(n))  # instance/frame order
    when = _acquisition_time(seed)
    common = _common_dataset(phantom, seed, study, series, for_uid, patient_id, patient_name, series_number, when)
    if multiframe:
        sop = derived_uid("phantom", "instance", content, "enhanced")
        ds = _enhanced_ct(common, phantom, stored[order], order, intercept, bits, signed, per_frame, sop)
        name = f"{rng.integers(16**12):012x}.dcm" if shuffle_file_names else "EN00001.dcm"
        _save(ds, out / name, ts, stored[order])
    else:
        names = [f"{v:012x}.dcm" for v in rng.choice(16**12, size=n, replace=False)] if shuffle_file_names else [f"IM{i + 1:05d}.dcm" for i in range(n)]
        for instance, k in enumerate(order, start=1):
            sop = derived_uid("phantom", "instance", content, str(k))
            ds = _ct_image(common, phantom, stored[k], k, instance, intercept, bits, signed, sop)
            _save(ds, out / names[instance - 1], ts, stored[k])
    if write_masks:
        meta = phantom.describe() | {"series_uid": series, "study_uid": study, "transfer_syntax": ts, "signed": signed, "reverse_instance_numbers": reverse, "multiframe": multiframe}
        np.savez_compressed(masks_path(out), lung_mask=phantom.lung_mask, lesion_mask=phantom.lesion_mask, meta=np.array(json.dumps(meta)))
    return out


def _encode(hu: np.ndarray, signed: bool) -> tuple[np.ndarray, float, int]:
    """(stored values, rescale intercept, bits stored) of HU (slope 1)."""
    v = np.rint(hu)
    if signed:
        return np.clip(v, -32768, 32767).astype(np.int16), 0.0, 16
    return np.clip(v + 1024.0, 0, 4095).astype(np.uint16), -1024.0, 12


def _acquisition_time(seed: int) -> datetime.datetime:
    base = datetime.datetime(2020, 1, 1, 8, 0, 0)
    return base + datetime.timedelta(days=int(seed) % 700, minutes=int(seed) * 7 % 600)


def _common_dataset(
    phantom: Phantom, seed: int, study: str, series: str, for_uid: str, patient_id: str | None, patient_name: str | None, series_number: int,
    when: datetime.datetime,
) -> Dataset:
    """Patient, study, series, frame of reference and equipment attributes shared by every instance."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name or f"PHANTOM^{phantom.kind.upper()}"
    ds.PatientID = patient_id or f"PHANTOM-{phantom.patient_seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom: no patient data"
    ds.StudyInstanceUID = study
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"PH{seed % 100000}"
    ds.AccessionNumber = ""
    ds.StudyDescription = "CT CHEST (synthetic phantom)"
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = int(series_number)
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.SeriesDescription = "Synthetic chest CT phantom - not a patient"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "COVID-CT node phantom"
    ds.ManufacturerModelName = "model.phantom"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "Synthetic"
    ds.KVP = f"{phantom.kvp:g}"
    ds.AcquisitionNumber = 1
    ds.ImageComments = "Synthetic phantom, not a patient. Not for clinical use."
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = phantom.shape[1], phantom.shape[2]
    ds.BitsAllocated = 16
    return ds


def _ct_image(
    common: Dataset, phantom: Phantom, stored: np.ndarray, k: int, instance: int, intercept: float, bits: int, signed: bool, sop: str
) -> Dataset:
    ds = Dataset()
    ds.update(common)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = instance
    ds.ContentDate, ds.ContentTime = common.StudyDate, common.StudyTime
    ds.AcquisitionDate, ds.AcquisitionTime = common.StudyDate, common.StudyTime
    position = phantom.image_positions[k]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in phantom.orientation]
    ds.PixelSpacing = [_ds(phantom.spacing[1]), _ds(phantom.spacing[2])]
    ds.SliceThickness = _ds(phantom.slice_thickness)
    ds.SliceLocation = _ds(position[2])
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    ds.ReconstructionDiameter = _ds(phantom.spacing[1] * max(phantom.shape[1], phantom.shape[2]))
    ds.ConvolutionKernel = "LUNG"
    ds.GantryDetectorTilt = "0"
    ds.RotationDirection = "CW"
    ds.XRayTubeCurrent = 200
    ds.PixelData = stored.tobytes()
    return ds


def _enhanced_ct(
    common: Dataset, phantom: Phantom, frames: np.ndarray, order: list[int], intercept: float, bits: int, signed: bool, per_frame_rescale: bool, sop: str
) -> Dataset:
    """An Enhanced CT Image (multi-frame): plane positions per frame, pixel measures and
    orientation shared, Pixel Value Transformation shared or per frame."""
    ds = Dataset()
    ds.update(common)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = common.StudyDate, common.StudyTime
    ds.AcquisitionDateTime = common.StudyDate + common.StudyTime
    ds.AcquisitionDuration = 5.0
    ds.ContentQualification = "PRODUCT"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.PresentationLUTShape = "IDENTITY"
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.NumberOfFrames = len(order)
    dim_org = derived_uid("phantom", "dimension-organization", sop)
    org = Dataset()
    org.DimensionOrganizationUID = dim_org
    ds.DimensionOrganizationSequence = [org]
    index = Dataset()
    index.DimensionOrganizationUID = dim_org
    index.DimensionIndexPointer = 0x00209057  # In-Stack Position Number
    index.FunctionalGroupPointer = 0x00209111  # Frame Content Sequence
    ds.DimensionIndexSequence = [index]

    def rescale() -> Dataset:
        item = Dataset()
        item.RescaleIntercept = _ds(intercept)
        item.RescaleSlope = "1"
        item.RescaleType = "HU"
        return item

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(phantom.spacing[1]), _ds(phantom.spacing[2])]
    measures.SliceThickness = _ds(phantom.slice_thickness)
    shared.PixelMeasuresSequence = [measures]
    plane = Dataset()
    plane.ImageOrientationPatient = [_ds(v) for v in phantom.orientation]
    shared.PlaneOrientationSequence = [plane]
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    frame_type.PixelPresentation = "MONOCHROME"
    frame_type.VolumetricProperties = "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = [frame_type]
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = "-600", "1500"
    shared.FrameVOILUTSequence = [voi]
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = [rescale()]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    n = len(order)
    for i, k in enumerate(order):
        item = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = n - k if order[0] > order[-1] else k + 1
        content.DimensionIndexValues = [int(content.InStackPositionNumber)]
        content.FrameAcquisitionNumber = 1
        item.FrameContentSequence = [content]
        pos = Dataset()
        pos.ImagePositionPatient = [_ds(v) for v in phantom.image_positions[k]]
        item.PlanePositionSequence = [pos]
        if per_frame_rescale:
            item.PixelValueTransformationSequence = [rescale()]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = frames.tobytes()
    return ds


def _ds(value: float) -> str:
    """A DS string (at most 16 characters)."""
    for digits in range(12, 4, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value!r} does not fit a DS")


def _save(ds: Dataset, path: Path, ts: str, stored: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    if ts in _COMPRESSED:
        ds.compress(ts, stored, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = UID(ts)
    ds.save_as(path, enforce_file_format=True)


# -- data sets --------------------------------------------------------------------------------------

LABELS_CSV = "labels.csv"
LABELS_COLUMNS: tuple[str, ...] = ("series", "label", "patient_id")


@dataclass(frozen=True)
class PhantomPlan:
    """One series of a phantom data set: its folder name, class, patient and seeds."""

    name: str
    kind: str
    patient_id: str
    seed: int
    patient_seed: int
    slices: int


def plan_phantom_dataset(
    count: int, *, seed: int = 0, kinds: tuple[str, ...] = KINDS, slices_min: int = 48, slices_max: int = 96, series_per_patient: int = 1,
    matched: bool = False,
) -> list[PhantomPlan]:
    """Class-balanced series (classes dealt in turn over patients; every series of a patient has
    the patient's class), with seeds and slice counts derived from ``seed``.

    ``matched``: instead, every patient is scanned once per kind with one seed and slice count, so
    the series of a patient are identical (anatomy, scanner, noise) except for the disease: only the
    lesions carry information about the label, so training cannot memorise patients or scans
    (``series_per_patient`` is then the number of kinds)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    if not 4 <= slices_min <= slices_max:
        raise ValueError(f"need 4 <= slices_min <= slices_max, got {slices_min}, {slices_max}")
    if series_per_patient < 1:
        raise ValueError(f"series_per_patient must be >= 1, got {series_per_patient}")
    rng = np.random.default_rng([seed, 6])
    plans = []
    for i in range(count):
        p = i // len(kinds) if matched else i // series_per_patient
        kind = kinds[i % len(kinds)] if matched else kinds[p % len(kinds)]
        series_seed = int(np.random.default_rng([seed, 7, p if matched else i]).integers(2**31 - 1))
        patient_seed = int(np.random.default_rng([seed, 8, p]).integers(2**31 - 1))
        plans.append(
            PhantomPlan(
                name=f"series_{i:04d}",
                kind=kind,
                patient_id=f"PHANTOM-{seed}-{p:04d}",
                seed=series_seed,
                patient_seed=patient_seed,
                slices=int(np.random.default_rng([seed, 9, p]).integers(slices_min, slices_max + 1)) if matched else int(rng.integers(slices_min, slices_max + 1)),
            )
        )
    return plans


def write_phantom_dataset(
    out_dir: Path | str,
    count: int,
    *,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    slices_min: int = 48,
    slices_max: int = 96,
    rows: int = 512,
    columns: int | None = None,
    series_per_patient: int = 1,
    transfer_syntax: str = "explicit",
    progress: Callable[[int, int, PhantomPlan], None] | None = None,
    matched: bool = False,
) -> Path:
    """Write ``count`` phantom series (:func:`plan_phantom_dataset`) as ``out_dir/series_NNNN/``
    with their masks beside them, and ``out_dir/labels.csv`` (columns series, label, patient_id;
    series = folder name relative to ``out_dir``). ``columns`` defaults to ``rows``. Returns the path
    of labels.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_phantom_dataset(count, seed=seed, kinds=kinds, slices_min=slices_min, slices_max=slices_max, series_per_patient=series_per_patient, matched=matched)
    for i, plan in enumerate(plans):
        phantom = make_phantom(plan.kind, seed=plan.seed, patient_seed=plan.patient_seed, slices=plan.slices, rows=rows, columns=columns or rows)
        write_phantom_series(phantom, out / plan.name, transfer_syntax=transfer_syntax, patient_id=plan.patient_id, series_number=1 + i % 1000)
        if progress is not None:
            progress(i + 1, len(plans), plan)
    labels = out / LABELS_CSV
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABELS_COLUMNS)
        for plan in plans:
            writer.writerow([plan.name, plan.kind, plan.patient_id])
    return labels
