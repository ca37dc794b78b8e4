"""Synthetic chest CT phantoms with COVID-19, CAP or no pneumonia, and their ground truth.

A phantom proves that the pipeline works and localises what it classifies; it proves nothing
clinical (no real patient data can be shipped or fetched here). Not for clinical use.

Geometry: axial head-first-supine, Image Orientation (Patient) 1\\0\\0\\0\\1\\0, so x goes to the
patient's left along a row, y to posterior down a column, and the slices are sorted ascending in z
(feet -> head), as :class:`model.inference.io.Volume` sorts them.

Three independent draws make a phantom, so that no single cue names the class:

- the patient (``patient_seed``; model.phantoms.anatomy): habitus, body outline, breasts, arms,
  ribs, scapulae, clavicles, spine, mediastinum, heart and great vessels, trachea, lungs with lobes
  and fissures, a dependent density gradient, vessel and bronchial trees (model.phantoms.trees),
  liver, spleen, stomach and bowel gas under the domes;
- the scan (``seed``; model.phantoms.scan): slice thickness 0.625-5 mm, pixel spacing 0.5-0.95 mm
  at 512, soft or sharp kernel, noise 8-60 HU, contrast or not, scan range from the upper abdomen
  to the neck, in-plane rotation, the table, arms up or down, streaks at the shoulders, breathing
  motion at the bases; and the confounders every class gets alike (model.phantoms.confounders:
  atelectasis, emphysema, nodules, scars, small effusions);
- the disease (``seed`` and the class; model.phantoms.lesions): COVID-19 by stage, CAP by pattern.

Two phantoms of one seed and patient seed are one patient on one scanner with one set of
confounders, differing only in the disease (what a "matched" data set uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.contract.notice import PHANTOM_NOTICE
from model.contract.result import CLASSES
from model.phantoms.anatomy import (
    AIR,
    BLOOD,
    FLUID,
    Anatomy,
    Grid,
    draw_anatomy,
    fissure_distance,
    lobe_map,
    make_grid,
    smooth_noise,
    static_anatomy,
    table_mask,
)
from model.phantoms.confounders import confounders
from model.phantoms.lesions import cap_lesions, coarse_depth, covid_lesions, pleural_effusion
from model.phantoms.mix import DEFAULT, Mix, describe_mix
from model.phantoms.scan import (
    Scan,
    apply_kernel,
    breathing_ghost,
    ct_noise,
    draw_scan,
    rotate_slices,
    shoulder_streaks,
    slice_profile,
)
from model.phantoms.trees import airway_vessel_trees, paint_segment

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
    # bool: anatomical lungs (lesions, atelectasis and intrapulmonary vessels included; trachea, main
    # bronchi, effusion excluded)
    lung_mask: np.ndarray
    lesion_mask: np.ndarray  # bool: the infection (ground glass / consolidation); empty for normal
    spacing: tuple[float, float, float]  # (slice distance, row spacing, column spacing) mm
    slice_thickness: float
    image_positions: np.ndarray  # (slices, 3) mm
    orientation: tuple[float, ...] = ORIENTATION
    noise_sigma: float = 0.0
    kvp: float = 120.0
    kernel: str = "soft"
    findings: list[dict[str, Any]] = field(default_factory=list)  # lesions and confounders, for people
    pattern: str = "none"  # the disease's stage (covid) or pattern (cap)
    scan: dict[str, Any] = field(default_factory=dict)  # the acquisition (model.phantoms.scan.Scan)
    mix: Mix = DEFAULT  # how often each confounder and pattern was drawn (model.phantoms.mix)

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
            "kernel": self.kernel,
            "pattern": self.pattern,
            "scan": self.scan,
            "mix": describe_mix(self.mix),
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
    max_slices: int = 400,
    mix: Mix = DEFAULT,
) -> Phantom:
    """A synthetic chest CT of class ``kind`` (see the module docstring).

    ``slices``: number of slices; by default the scan's range over its slice thickness, at most ``max_slices``
    (then the slices are further apart than they are thick). With ``slices`` and no ``slice_spacing`` the
    slices cover the scan range, so the spacing follows from the count. The pixel spacing is the protocol's
    field of view over the matrix size, so small matrices give the same anatomy at lower resolution.
    ``noise=False`` leaves out scanner noise, kernel and artefacts (for tests of geometry).
    ``mix``: how often each confounder and disease pattern is drawn (model.phantoms.mix).
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
    scan = draw_scan(scan_rng)
    lesion_rng = np.random.default_rng([seed, 3, KINDS.index(kind)])
    extra_rng = np.random.default_rng([seed, 4])

    grid, thickness = make_grid(anatomy, scan, scan_rng, slices, rows, columns, slice_spacing, max_slices)
    hu, lung_side, ctx = static_anatomy(anatomy, grid, scan)
    _parenchyma(hu, lung_side, grid, anatomy, ctx, extra_rng)
    lobes = lobe_map(lung_side, grid, anatomy, ctx["bi"])
    vessels, bronchi = airway_vessel_trees(anatomy, grid, ctx, lung_side, extra_rng)
    depth = coarse_depth(lung_side, grid)
    findings: list[dict[str, Any]] = []
    effusion = confounders(hu, lung_side, depth, grid, ctx, extra_rng, findings, mix)
    lesion_weight = np.zeros(hu.shape, dtype=np.float32)
    pattern = "none"
    if kind == "covid":
        pattern = covid_lesions(hu, lung_side, depth, grid, ctx, lesion_rng, lesion_weight, findings, mix.covid_stages)
    elif kind == "cap":
        pattern, sides = cap_lesions(
            hu, lung_side, lobes, depth, grid, ctx, bronchi, lesion_rng, lesion_weight, findings, mix.cap_patterns
        )
        if sides and lesion_rng.random() < 0.35:
            for s in sides if lesion_rng.random() < 0.3 else sides[:1]:
                effusion |= pleural_effusion(
                    lung_side, grid, ctx, lesion_rng, s, findings, reason="parapneumonic effusion"
                )
    lung = lung_side > 0
    # Vessels and bronchi go over the parenchyma and the lesions: vessels stay visible in
    # ground glass, the bronchial lumen stays air in consolidation (air bronchograms).
    blood = BLOOD + 0.8 * scan.contrast
    for seg in vessels:
        paint_segment(hu, seg, grid, blood, lung if seg.side else None, wall=None)
    for seg in bronchi:
        paint_segment(hu, seg, grid, AIR, lung if seg.side else None, wall=max(0.6, 0.22 * seg.r0))
    if effusion.any():
        fluid = effusion & lung
        hu[fluid] = FLUID + 6.0 * extra_rng.standard_normal(int(fluid.sum())).astype(np.float32) * 0.3
        lung &= ~effusion
    lesion_mask = (lesion_weight > 0.5) & lung
    hu, lung, lesion_mask = _acquire(hu, lung, lesion_mask, grid, anatomy, scan, thickness, ctx, scan_rng, noise)
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
        noise_sigma=scan.noise if noise else 0.0,
        kvp=scan.kvp,
        kernel=scan.kernel,
        findings=findings,
        pattern=pattern,
        scan=scan.describe() | {"thickness": round(float(thickness), 3)},
        mix=mix,
    )


def _parenchyma(
    hu: np.ndarray, lung_side: np.ndarray, grid: Grid, an: Anatomy, ctx: dict[str, Any], rng: np.random.Generator
) -> None:
    """Base density, the dependent gradient (the back of the lung is denser), a soft texture and the
    fissures (thin lines where the lobes meet)."""
    lung = lung_side > 0
    texture = smooth_noise(hu.shape, rng, cell_mm=(18.0, 12.0, 12.0), spacing=(grid.dz, grid.ps, grid.ps))
    yy = np.broadcast_to(np.clip(grid.y / ctx["bi"], -1.0, 1.0).astype(np.float32)[None, :, None], hu.shape)
    hu[lung] = an.parenchyma + an.gravity * (0.5 * yy[lung] + 0.25) + 12.0 * texture[lung]
    visible = min(1.0, 1.2 / max(grid.ps, grid.dz * 0.5))
    for k in range(hu.shape[0]):
        if not lung[k].any():
            continue
        d = fissure_distance(grid, an, ctx["bi"], k)
        line = (np.exp(-((d / 0.8) ** 2)) * 350.0 * visible).astype(np.float32)
        hu[k] += line[:, None] * lung[k]
        if grid.t[k] > an.oblique[0] * an.lung_height:
            dh = np.abs(grid.t[k] - an.horizontal * an.lung_height)
            if dh < 3.0 * grid.dz:
                front = (grid.y < 0)[:, None] & (lung_side[k] == 1)
                hu[k] += float(np.exp(-((dh / 0.8) ** 2)) * 350.0 * visible) * front


def _acquire(
    hu: np.ndarray,
    lung: np.ndarray,
    lesion: np.ndarray,
    grid: Grid,
    an: Anatomy,
    scan: Scan,
    thickness: float,
    ctx: dict[str, Any],
    rng: np.random.Generator,
    noise: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the scanner does to the anatomy: rotation on the table, the table, slice thickness,
    breathing motion, the kernel, noise, streaks and the reconstruction circle."""
    if scan.rotation:
        hu = rotate_slices(hu, scan.rotation, 1, AIR)
        lung = rotate_slices(lung.astype(np.uint8), scan.rotation, 0, 0).astype(bool)
        lesion = rotate_slices(lesion.astype(np.uint8), scan.rotation, 0, 0).astype(bool)
    table, table_hu = table_mask(grid, an, scan.table)
    hu[(table[None] & (hu < -500))] = table_hu
    hu = slice_profile(hu, thickness, grid.dz)
    if noise:
        if scan.breathing > 0:
            breathing_ghost(hu, grid.t, an.lung_height, scan.breathing, grid.dz)
        hu = apply_kernel(hu, scan.kernel, grid.ps)
        hu += ct_noise(hu.shape, rng, scan.noise, scan.kernel, grid.ps)
        if scan.streaks > 0:
            u = grid.t / an.lung_height
            shoulders = np.flatnonzero((u > 0.88) & (u < 1.1))
            shoulder_streaks(hu, grid.y, ctx["body"], shoulders, scan.streaks, rng)
    hu[:, ~ctx["fov"]] = MIN_HU
    np.clip(hu, MIN_HU, MAX_HU, out=hu)
    return hu.astype(np.float32, copy=False), lung, lesion
