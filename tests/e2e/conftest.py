"""Fixtures of the end-to-end tests: COVID-19 phantom series (model.phantoms), each written once
per session when a test first asks for it.

The tests follow a series through the whole path that a finding takes (SR with regions, overlays,
SEG, KOS), and check that what arrives says what the phantom holds (tests.e2e.stack.check_finding):
COVID-19 present, regions on the lesions, key images with lesion. How well the model classifies
in general is measured by `dicom-node model evaluate` on held-out phantoms, not here."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from tests.harness.synthetic import clear_phantom

# The disease of the phantoms (and the decision the tests expect).
KIND = "covid"
# Small series keep the suite within minutes on a 2-core CPU; 256x256 keeps storage and SC small.
SLICES = 24
MATRIX = 256


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``phantom(seed)``: the folder of a KIND phantom series for that seed, with a clear finding
    (tests.harness.synthetic.clear_phantom)."""
    root = tmp_path_factory.mktemp("phantoms")
    written: dict[int, Path] = {}

    def get(seed: int) -> Path:
        if seed not in written:
            written[seed] = clear_phantom(KIND, root / f"{KIND}-{seed}", seed, slices=SLICES, rows=MATRIX)
        return written[seed]

    return get
