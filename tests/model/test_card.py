"""model.training.card: the figures the READMEs quote are generated from the shipped weights'
metadata. Covers: every generated block of README.md and model/README.md equals what
model/weights/metadata.json renders (a figure changed by hand, or metadata changed without
`dicom-node model card`, fails here), the blocks the READMEs must carry are there, and the
rewriting itself on a small text. Not covered: prose figures outside the blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.inference.weights import read_metadata, weights_folder
from model.training.card import blocks, render

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "required"),
    [("README.md", {"readme-row"}), ("model/README.md", {"held-out", "by-category", "calibration"})],
)
def test_readme_figures_are_the_metadata(name: str, required: set[str]) -> None:
    text = (ROOT / name).read_text()
    assert required <= set(blocks(text)), f"{name} lacks figures blocks {required - set(blocks(text))}"
    meta = read_metadata(weights_folder(None))
    assert render(text, meta) == text, f"{name}: run `dicom-node model card README.md model/README.md`"


def test_render_rewrites_only_the_blocks() -> None:
    meta = read_metadata(weights_folder(None))
    text = "before\n<!-- figures:calibration -->\nstale\n<!-- /figures:calibration -->\nafter\n"
    out = render(text, meta)
    assert out.startswith("before\n<!-- figures:calibration -->\n") and out.endswith(
        "<!-- /figures:calibration -->\nafter\n"
    )
    assert "stale" not in out and "temperature" in out
    with pytest.raises(ValueError, match="unknown figures block"):
        render("<!-- figures:nope -->\nx\n<!-- /figures:nope -->", meta)
