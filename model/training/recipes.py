"""Named training recipes: the paper's, and the one that trains the shipped weights on a 2-core CPU.

``dicom-node model train --recipe NAME`` starts from a recipe; any option given on the command line
overrides its value. "auto" is "cpu" on a CPU and "paper" on a GPU.

The CPU recipe (what it changes from the paper, and why; the measurements are in model/README.md):

- input: the box around the lungs (found by the lung network, plus 10 mm), 96 x 160 (height x
  width: the lungs are wider than tall; about 2 mm a pixel over the chest; 64 x 96, about 3 mm, up
  to weights 0.4.4: small disease on one to three slabs was too faint there), thin slices
  averaged into 2.5 mm slabs, the window mapped to [-1, 1]; nothing is masked, so what the
  network sees of a lesion never depends on the lung mask being right (model.inference.preprocess).
  At the paper's 224 x 224 whole slice, on two cores, an iteration costs ~10x more and a
  ground-glass patch is a few faint pixels;
- objective "mil": series batches, the network's own top-k slices per series (model.training.train).
  The paper's slice objective labels every slice of a covid series covid, lesion-free ones
  included; with a few hundred series it memorised the training set and stayed at chance on
  validation;
- Adam at 1e-3 with 100 iterations of warm-up and a cosine decay to the end of the time budget;
  per slice a left-right flip, a small affine and an HU offset and gain (scanners differ in
  calibration, patients in aeration); 15 patient folds (one validates), validation (series
  accuracy) every 300 iterations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from model.inference.preprocess import InputSpec
from model.training.choices import RECIPE_CHOICES, RECIPE_NAMES
from model.training.train import TrainConfig

PAPER = TrainConfig(recipe="paper")

CPU = TrainConfig(
    recipe="cpu",
    input=InputSpec(
        height=96,
        width=160,
        crop="lungs",
        crop_margin_mm=10.0,
        outside_lungs="keep",
        normalisation="window",
        slab_mm=2.5,
    ),
    objective="mil",
    batch_size=8,
    mil_candidates=16,
    mil_k=4,
    iterations=5000,
    learning_rate=1e-3,
    schedule="cosine",
    warmup=100,
    validate_every=300,
    patience=5000,
    folds=15,
    augment="flip+affine+intensity",
)

RECIPES: dict[str, TrainConfig] = {"paper": PAPER, "cpu": CPU}
assert tuple(RECIPES) == RECIPE_NAMES


def recipe(name: str, device: str = "cpu", **overrides: Any) -> TrainConfig:
    """The recipe ``name`` ("auto": "cpu" on a CPU, "paper" on a GPU) with ``overrides`` (those that
    are None are left out) and the device."""
    if name == "auto":
        name = "cpu" if device == "cpu" else "paper"
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPE_CHOICES}, got {name!r}")
    values = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(RECIPES[name], device=device, **values)
