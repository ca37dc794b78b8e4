"""Fixtures of the end-to-end tests: COVID-19 phantom series (model.phantom), each written once
per session when a test first asks for it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from model.phantom import write_phantom_series

# Small series keep the suite within minutes on a 2-core CPU; 256x256 keeps storage and SC small.
SLICES = 24
MATRIX = 256


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``phantom(seed)``: the folder of a COVID-19 phantom series for that seed."""
    root = tmp_path_factory.mktemp("phantoms")
    written: dict[int, Path] = {}

    def get(seed: int) -> Path:
        if seed not in written:
            written[seed] = write_phantom_series("covid", root / f"covid-{seed}", seed=seed, slices=SLICES, rows=MATRIX, columns=MATRIX)
        return written[seed]

    return get
