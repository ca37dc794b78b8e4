"""Shared model fixtures: small synthetic phantoms (built once per session) and their series.

Keep fixtures small and additive: 128 x 128 matrices, a few dozen slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model.phantoms.phantom import Phantom, make_phantom
from model.phantoms.writer import write_phantom_series

SMALL: dict[str, Any] = {"rows": 128, "columns": 128, "slices": 32}


@pytest.fixture(scope="session")
def small_phantoms() -> dict[str, Phantom]:
    """One 128 x 128 x 32 phantom per class, seed 11 (same anatomy, noise and scanner for all)."""
    return {kind: make_phantom(kind, seed=11, **SMALL) for kind in ("covid", "cap", "normal")}


@pytest.fixture(scope="session")
def covid_series(tmp_path_factory: pytest.TempPathFactory, small_phantoms: dict[str, Phantom]) -> Path:
    """The covid phantom as a CT series: instance numbers head -> feet, random file names,
    unsigned 12-bit; masks beside the folder."""
    out = tmp_path_factory.mktemp("covid-series") / "series"
    return write_phantom_series(
        small_phantoms["covid"], out, reverse_instance_numbers=True, signed=False, shuffle_file_names=True
    )
