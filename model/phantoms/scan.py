"""How a phantom is scanned: the acquisition and reconstruction parameters drawn per scan, and what
they do to the image (slice thickness, kernel, noise, contrast, in-plane rotation, breathing motion,
streaks at the shoulders).

Drawn from the scan's seed, never from the class: a COVID-19 and a normal phantom of one seed are
one patient on one scanner. Ranges follow what chest CT protocols produce: slices 0.625-5 mm, pixels
0.5-0.95 mm at 512 x 512 (the field of view fitted to the patient), soft and sharp kernels, noise
8-60 HU (low dose to standard dose), contrast in about 40 % of scans.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

THICKNESSES_MM: tuple[float, ...] = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
KERNELS: tuple[str, ...] = ("soft", "sharp")


@dataclass(frozen=True)
class Scan:
    """Acquisition and reconstruction of one series (mm, HU, degrees)."""

    thickness: float  # nominal slice thickness
    below: float  # scan range below the lowest lung point (upper abdomen)
    above: float  # scan range above the apices (neck, shoulders)
    pixel_mm_512: float  # pixel spacing the protocol would give at 512 x 512
    kernel: str  # "soft" (mediastinal) or "sharp" (lung)
    noise: float  # noise sigma at this thickness
    contrast: float  # HU added to blood (0 = no contrast)
    rotation: float  # in-plane rotation of the patient on the table
    breathing: float  # weight of the motion ghost at the bases (0 = none)
    streaks: float  # amplitude of the streaks between the shoulders (HU)
    kvp: float
    arms_up: bool
    table: int  # table style 0..2

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def draw_scan(rng: np.random.Generator) -> Scan:
    thickness = float(rng.choice(THICKNESSES_MM))
    # Noise grows as the slice thins (fewer photons per voxel); low-dose protocols double it.
    base = rng.uniform(8.0, 30.0) * math.sqrt(2.5 / thickness)
    if rng.random() < 0.3:
        base *= rng.uniform(1.5, 2.5)
    return Scan(
        thickness=thickness,
        below=float(rng.uniform(10.0, 140.0)),
        above=float(rng.uniform(5.0, 90.0)),
        pixel_mm_512=float(rng.uniform(0.5, 0.95)),
        kernel=str(rng.choice(KERNELS)),
        noise=float(np.clip(base, 8.0, 60.0)),
        contrast=float(rng.uniform(120.0, 300.0)) if rng.random() < 0.4 else 0.0,
        rotation=float(rng.normal(0.0, 4.0)) if rng.random() < 0.7 else 0.0,
        breathing=float(rng.uniform(0.25, 0.5)) if rng.random() < 0.25 else 0.0,
        streaks=float(rng.uniform(30.0, 140.0)) if rng.random() < 0.5 else 0.0,
        kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0])),
        arms_up=bool(rng.random() < 0.75),
        table=int(rng.integers(0, 3)),
    )


def rotate_slices(volume: np.ndarray, degrees: float, order: int, fill: float) -> np.ndarray:
    """Rotate every slice about the image centre (bilinear for images, nearest for labels)."""
    if abs(degrees) < 0.05:
        return volume
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    n, rows, cols = volume.shape
    matrix = torch.tensor([[c, -s * rows / cols, 0.0], [s * cols / rows, c, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(matrix[None], [1, 1, rows, cols], align_corners=False)
    mode = "bilinear" if order else "nearest"
    out = np.empty_like(volume)
    chunk = 32
    with torch.no_grad():
        for start in range(0, n, chunk):
            x = torch.from_numpy(np.ascontiguousarray(volume[start : start + chunk], dtype=np.float32))[:, None]
            x = x - fill
            y = F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), mode=mode, align_corners=False) + fill
            out[start : start + chunk] = y[:, 0].numpy().astype(volume.dtype)
    return out


def slice_profile(hu: np.ndarray, thickness: float, spacing: float) -> np.ndarray:
    """Partial volume across a slice thicker than the slice distance: a Gaussian along z whose
    width makes up the difference (none when the slices are contiguous or overlap)."""
    extra = max(0.0, thickness**2 - spacing**2)
    sigma = math.sqrt(extra) / 2.355 / spacing
    if sigma < 0.2:
        return hu
    return ndi.gaussian_filter1d(hu, sigma, axis=0, mode="nearest")


def apply_kernel(hu: np.ndarray, kernel: str, pixel_mm: float) -> np.ndarray:
    """The reconstruction kernel in-plane: soft blurs (about 0.6 mm), sharp enhances edges."""
    sigma = 0.6 / pixel_mm
    if kernel == "soft":
        return hu if sigma < 0.25 else ndi.gaussian_filter(hu, (0.0, sigma, sigma), mode="nearest")
    blur = ndi.gaussian_filter(hu, (0.0, max(sigma, 0.5), max(sigma, 0.5)), mode="nearest")
    return hu + 0.6 * (hu - blur)


def ct_noise(
    shape: tuple[int, ...], rng: np.random.Generator, sigma: float, kernel: str, pixel_mm: float
) -> np.ndarray:
    """Correlated scanner noise scaled to ``sigma`` HU: a grain of about 1.2 mm for the soft
    kernel, finer for the sharp one (white noise on a coarser grid, bilinearly upsampled)."""
    n, rows, cols = shape
    grain_mm = 1.2 if kernel == "soft" else 0.7
    factor = max(1.0, grain_mm / pixel_mm)
    small = rng.standard_normal(
        (n, 1, max(2, int(round(rows / factor))), max(2, int(round(cols / factor)))), dtype=np.float32
    )
    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(small), size=(rows, cols), mode="bilinear", align_corners=False)[:, 0]
    noise = out.numpy()
    noise *= sigma / max(float(noise[:, ::5, ::5].std()), 1e-6)
    return noise


def breathing_ghost(hu: np.ndarray, t: np.ndarray, lung_height: float, weight: float, dz: float) -> None:
    """Motion at the bases: slices of the lowest third blend with the slice 6-10 mm higher, which
    doubles the diaphragm's and the vessels' edges (in place)."""
    shift = max(1, int(round(8.0 / dz)))
    base = np.flatnonzero(t < 0.33 * lung_height)
    for k in base:  # from the feet up: the slice blended in (higher) is not blended yet
        j = min(hu.shape[0] - 1, int(k) + shift)
        w = weight * float(np.clip(1.0 - t[k] / (0.33 * lung_height), 0.2, 1.0))
        hu[k] = (1.0 - w) * hu[k] + w * hu[j]


def shoulder_streaks(
    hu: np.ndarray,
    rows_mm: np.ndarray,
    body: np.ndarray,
    slices: np.ndarray,
    amplitude: float,
    rng: np.random.Generator,
) -> None:
    """Photon starvation between the shoulders: dark and bright bands along the line joining them
    (rows), strongest at the shoulders' height, inside the body (in place)."""
    for k in slices:
        y0 = rng.normal(0.0, 15.0)
        width = rng.uniform(15.0, 40.0)
        phase = rng.standard_normal(rows_mm.size).astype(np.float32)
        profile = ndi.gaussian_filter1d(phase, 1.5) * 2.5
        envelope = np.exp(-(((rows_mm - y0) / width) ** 2)).astype(np.float32)
        hu[k] += (amplitude * profile * envelope)[:, None] * body[k]
