"""Phantoms written in the public data sets' layouts (MosMedData-style NIfTI, the CC-CCII image tree),
so that their readers (model.training.datasets) are tested on files shaped like the real ones."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from model.inference.preprocess import (
    LUNG_WINDOW,
    window_bounds,
)
from model.phantoms.phantom import KINDS, make_phantom
from model.training.datasets import CCCCII_CLASSES, LABELS_CSV


def write_nifti_replica(out_dir: Path | str, count: int, *, seed: int = 0, rows: int = 128, slices: int = 32) -> Path:
    """``count`` phantoms as .nii.gz (int16 HU) + labels.csv; half stored with the DICOM-like
    (LPS) array order and a flipped affine, half already canonical (RAS), so readers must use the
    affine. Returns labels.csv."""

    out = Path(out_dir)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    rows_out = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        p = make_phantom(kind, seed=seed * 1000 + i, rows=rows, columns=rows, slices=slices)
        dz, dy, dx = p.spacing
        x0, y0, z0 = p.image_positions[0]
        hu = np.rint(p.hu).astype(np.int16)
        if i % 2 == 0:  # array (columns, rows, slices) as stored by DICOM converters
            data = hu.transpose(2, 1, 0)
            affine = np.array([[-dx, 0, 0, -x0], [0, -dy, 0, -y0], [0, 0, dz, z0], [0, 0, 0, 1]], dtype=np.float64)
        else:  # canonical RAS: first axis to the right, second to anterior
            data = hu[:, ::-1, ::-1].transpose(2, 1, 0)
            n_r, n_c = hu.shape[1], hu.shape[2]
            affine = np.array(
                [[dx, 0, 0, -(x0 + dx * (n_c - 1))], [0, dy, 0, -(y0 + dy * (n_r - 1))], [0, 0, dz, z0], [0, 0, 0, 1]],
                dtype=np.float64,
            )
        name = f"volumes/study_{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(out / name))
        rows_out.append((name, kind, f"NIFTI-{seed}-{i:04d}"))
    labels = out / LABELS_CSV
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["series", "label", "patient_id"])
        w.writerows(rows_out)
    return labels


def write_ccccii_replica(out_dir: Path | str, count: int, *, seed: int = 0, rows: int = 128, slices: int = 32) -> Path:
    """``count`` phantoms as CC-CCII ``<NCP|CP|Normal>/<patient>/<scan>/<n>.png|jpg`` (8-bit, lung
    window W1500/L-600). File numbers are unpadded (so 10 sorts after 9 only numerically) and
    descend head -> feet in every other scan; JPEG for every third scan. Returns ``out_dir``."""

    names = {v: k for k, v in CCCCII_CLASSES.items()}
    out = Path(out_dir)
    low, high = window_bounds(LUNG_WINDOW)
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        p = make_phantom(kind, seed=seed * 1000 + i, rows=rows, columns=rows, slices=slices)
        scan = out / names[kind] / str(100 + i) / str(3000 + i)
        scan.mkdir(parents=True, exist_ok=True)
        img = np.rint((np.clip(p.hu, low, high) - low) / (high - low) * 255.0).astype(np.uint8)
        order = range(p.shape[0] - 1, -1, -1) if i % 2 else range(p.shape[0])
        ext = ".jpg" if i % 3 == 2 else ".png"
        for number, k in enumerate(order):
            picture = Image.fromarray(img[k])
            if ext == ".jpg":
                picture.save(scan / f"{number}{ext}", quality=95)
            else:
                picture.save(scan / f"{number}{ext}")
    return out
