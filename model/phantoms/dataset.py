"""Phantom data sets: class-balanced (or matched) series of patients, planned from one seed and
written as the DICOM + labels.csv layout that model.training.datasets reads."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from model.phantoms.mix import DEFAULT, Mix
from model.phantoms.phantom import KINDS, make_phantom
from model.phantoms.writer import write_phantom_series

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
    slices: int | None  # None: the scan's own (its range over its slice thickness, at most max_slices)
    max_slices: int = 400


def plan_phantom_dataset(
    count: int,
    *,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    slices_min: int = 48,
    slices_max: int = 96,
    series_per_patient: int = 1,
    matched: bool = False,
    native_slices: bool = False,
) -> list[PhantomPlan]:
    """Class-balanced series (classes dealt in turn over patients; every series of a patient has
    the patient's class), with seeds and slice counts derived from ``seed``.

    ``matched``: instead, every patient is scanned once per kind with one seed and slice count, so
    the series of a patient are identical (anatomy, scanner, noise) except for the disease: only the
    lesions carry information about the label, so training cannot memorise patients or scans
    (``series_per_patient`` is then the number of kinds).

    ``native_slices``: each series gets its scan's own slices (its range over its slice
    thickness), at most ``slices_max``, instead of a count drawn from [slices_min, slices_max]."""
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
                slices=None
                if native_slices
                else int(np.random.default_rng([seed, 9, p]).integers(slices_min, slices_max + 1))
                if matched
                else int(rng.integers(slices_min, slices_max + 1)),
                max_slices=slices_max,
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
    native_slices: bool = False,
    mix: Mix = DEFAULT,
) -> Path:
    """Write ``count`` phantom series (:func:`plan_phantom_dataset`) as ``out_dir/series_NNNN/``
    with their masks beside them, and ``out_dir/labels.csv`` (columns series, label, patient_id;
    series = folder name relative to ``out_dir``). ``columns`` defaults to ``rows``; ``mix``: how often
    each confounder and disease pattern is drawn (model.phantoms.mix). Returns the path of labels.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_phantom_dataset(
        count,
        seed=seed,
        kinds=kinds,
        slices_min=slices_min,
        slices_max=slices_max,
        series_per_patient=series_per_patient,
        matched=matched,
        native_slices=native_slices,
    )
    for i, plan in enumerate(plans):
        phantom = make_phantom(
            plan.kind,
            seed=plan.seed,
            patient_seed=plan.patient_seed,
            slices=plan.slices,
            rows=rows,
            columns=columns or rows,
            max_slices=plan.max_slices,
            mix=mix,
        )
        write_phantom_series(
            phantom,
            out / plan.name,
            transfer_syntax=transfer_syntax,
            patient_id=plan.patient_id,
            series_number=1 + i % 1000,
        )
        if progress is not None:
            progress(i + 1, len(plans), plan)
    labels = out / LABELS_CSV
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(LABELS_COLUMNS)
        for plan in plans:
            writer.writerow([plan.name, plan.kind, plan.patient_id])
    return labels
