"""Synthetic chest CT phantoms with COVID-19, CAP or no pneumonia, and their ground truth.

A phantom proves that the pipeline works and localises what it classifies; it proves nothing
clinical (no real patient data can be shipped or fetched here). Not for clinical use.

Geometry: axial head-first-supine, Image Orientation (Patient) 1\\0\\0\\0\\1\\0, so x goes to the
patient's left along a row, y to posterior down a column, and the slices are sorted ascending in z
(feet -> head), as :class:`model.inference.io.Volume` sorts them. Anatomy (method.md): body outline with
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

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.contract.notice import PHANTOM_NOTICE
from model.contract.result import CLASSES
from model.phantoms.anatomy import (
    AIR,
    BLOOD,
    FLUID,
    airway_vessel_trees,
    ct_noise,
    draw_anatomy,
    make_grid,
    paint_segment,
    smooth_noise,
    static_anatomy,
)
from model.phantoms.lesions import cap_lesions, coarse_depth, covid_lesions, incidental_findings, pleural_effusion

KINDS: tuple[str, ...] = CLASSES  # ("covid", "cap", "normal")
ORIENTATION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
MIN_HU, MAX_HU = -1024.0, 3071.0


@dataclass
class Phantom:
    """A synthetic chest CT and its ground truth, slices ascending along z (feet -> head)."""

    kind: str
    seed: int
    patient_seed: int
    hu: np.ndarray  # float32 (slices, rows, columns), clipped to [-1024, 3071]
    lung_mask: (
        np.ndarray
    )  # bool: anatomical lungs (lesions and intrapulmonary vessels included; trachea, main bronchi, effusion excluded)
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
        slices, rows, columns = self.hu.shape
        return int(slices), int(rows), int(columns)

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
            "notice": PHANTOM_NOTICE,
        }


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
    anatomy = draw_anatomy(np.random.default_rng([patient_seed, 1]))
    scan_rng = np.random.default_rng([seed, 2])
    lesion_rng = np.random.default_rng([seed, 3, KINDS.index(kind)])
    extra_rng = np.random.default_rng([seed, 4])

    grid, thickness = make_grid(anatomy, scan_rng, slices, rows, columns, slice_spacing)
    labels_hu, lung_side, ctx = static_anatomy(anatomy, grid)
    hu = labels_hu
    lung = lung_side > 0
    # Parenchyma: base density, gravity gradient (dependent lung is denser), soft texture.
    texture = smooth_noise(hu.shape, extra_rng, cell_mm=(18.0, 12.0, 12.0), spacing=(grid.dz, grid.ps, grid.ps))
    yy = np.broadcast_to((grid.y / ctx["bi"]).astype(np.float32)[None, :, None], hu.shape)
    hu[lung] = (
        anatomy.parenchyma
        + anatomy.gravity * np.clip(yy[lung], -1.0, 1.0) * 0.5
        + anatomy.gravity * 0.25
        + 12.0 * texture[lung]
    )

    findings: list[dict[str, Any]] = []
    vessels, bronchi = airway_vessel_trees(anatomy, grid, ctx, lung_side, extra_rng)
    depth = coarse_depth(lung_side, grid)

    effusion = np.zeros(hu.shape, dtype=bool)
    lesion_weight = np.zeros(hu.shape, dtype=np.float32)
    if kind == "covid":
        covid_lesions(hu, lung_side, depth, grid, ctx, lesion_rng, lesion_weight, findings)
        if lesion_rng.random() < 0.05:
            effusion |= pleural_effusion(lung_side, grid, ctx, lesion_rng, int(lesion_rng.choice([-1, 1])), findings)
    elif kind == "cap":
        sides = cap_lesions(hu, lung_side, depth, grid, ctx, bronchi, lesion_rng, lesion_weight, findings)
        if lesion_rng.random() < 0.35:
            for s in sides if lesion_rng.random() < 0.3 else sides[:1]:
                effusion |= pleural_effusion(lung_side, grid, ctx, lesion_rng, s, findings)
    incidental_findings(hu, lung_side, depth, grid, ctx, extra_rng, findings)

    # Vessels and bronchi go over the parenchyma and the lesions: vessels stay visible in
    # ground glass, bronchial lumen stays air in consolidation (air bronchograms).
    for seg in vessels:
        paint_segment(hu, seg, grid, BLOOD, lung if seg.side else None, wall=None)
    for seg in bronchi:
        paint_segment(hu, seg, grid, AIR, lung if seg.side else None, wall=max(0.6, 0.22 * seg.r0))
    if effusion.any():
        fluid = effusion & lung
        hu[fluid] = FLUID + 6.0 * texture[fluid]
        lung &= ~effusion
    lesion_mask = (lesion_weight > 0.5) & lung

    sigma = float(scan_rng.uniform(10.0, 30.0) * math.sqrt(2.5 / max(thickness, 0.5)))
    sigma = float(np.clip(sigma, 6.0, 60.0))
    if noise:
        hu += ct_noise(hu.shape, scan_rng, sigma)
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
