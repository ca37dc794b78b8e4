"""Evaluation: the metrics on hand-computed cases, and an evaluation run over phantoms with a
tiny network (JSON structure, both aggregation rules, localisation metrics, PNGs beside the JSON).

Covers model/training/metrics.py and model/training/evaluate.py. Not covered here: the shipped weights' numbers
(recorded in model/weights/metadata.json by ``dicom-node model evaluate``), the CLI (test_cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.inference.multiscale_cam import Predictor, settings_for
from model.inference.network import WeaklySupervisedNet
from model.inference.options import InferenceOptions
from model.inference.preprocess import InputSpec
from model.inference.weights import load_weights, save_weights
from model.phantoms.phantom import Phantom
from model.phantoms.writer import masks_path, read_phantom_truth, write_phantom_series
from model.training import metrics
from model.training.evaluate import EvalSeries, evaluate_series
from model.training.folder import default_metadata
from model.training.train import TrainConfig

TINY: dict[str, Any] = {"widths": (4, 8, 8, 16, 16), "depths": (1, 1, 1, 1, 1)}


def test_roc_auc_by_hand() -> None:
    assert metrics.roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1]) == 1.0
    assert metrics.roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    # One tie between a positive and a negative counts half: (1 + 0.5 + 1 + 1) / 4.
    assert metrics.roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert metrics.roc_auc([1, 1], [0.2, 0.3]) is None
    fpr, tpr = metrics.roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]


def test_classification_report_by_hand() -> None:
    classes = ("covid", "cap", "normal")
    y = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    rep = metrics.classification_report(y, probs, classes)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["confusion_matrix"]["counts"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    cov = rep["per_class"]["covid"]
    assert cov["precision"] == 1.0 and cov["recall"] == pytest.approx(2 / 3) and cov["specificity"] == 1.0
    cap = rep["per_class"]["cap"]
    assert (
        cap["precision"] == pytest.approx(0.5)
        and cap["recall"] == pytest.approx(0.5)
        and cap["specificity"] == pytest.approx(3 / 4)
    )
    # Weighted by support 3, 2, 1.
    assert rep["weighted_recall"] == pytest.approx((3 * 2 / 3 + 2 * 0.5 + 1 * 1.0) / 6)
    assert rep["weighted_specificity"] == pytest.approx((3 * 1.0 + 2 * 0.75 + 1 * 0.8) / 6)
    assert rep["confusion_matrix"]["row_normalised"][0] == pytest.approx([2 / 3, 1 / 3, 0.0], abs=1e-4)


def test_pointing_game_and_dice() -> None:
    lesion = np.zeros((3, 40, 40), dtype=bool)
    lesion[1, 10:20, 10:20] = True
    lesion[2, 30:32, 30:32] = True
    heat = np.zeros((3, 40, 40), dtype=np.float32)
    heat[1, 15, 15] = 1.0  # inside
    heat[2, 30, 36] = 0.5  # 4 px = 4 mm from the lesion at 1 mm spacing
    pg = metrics.pointing_game(heat, lesion, spacing=(2.0, 1.0, 1.0), tolerance_mm=5.0)
    assert pg == {"series_hit": True, "slice_hits": 2, "slices_with_lesion": 2}
    strict = metrics.pointing_game(heat, lesion, spacing=(2.0, 1.0, 1.0), tolerance_mm=3.0)
    assert strict["slice_hits"] == 1
    assert metrics.dice(lesion, lesion) == 1.0 and metrics.dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    half = lesion.copy()
    half[1, 10:15] = False
    assert metrics.dice(half, lesion) == pytest.approx(2 * 54 / (54 + 104))


@pytest.fixture(scope="module")
def tiny_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    torch.manual_seed(3)
    net = WeaklySupervisedNet(**TINY).eval()
    out = tmp_path_factory.mktemp("w") / "tiny"
    save_weights(
        net, out, default_metadata(TrainConfig(input=InputSpec(height=64, width=64), **TINY), name="tiny", version="0")
    )
    return Predictor(load_weights(out), settings_for(out, InferenceOptions(localisation="cam")))


@pytest.mark.slow
def test_evaluate_series_over_phantoms(
    tiny_predictor: Predictor, small_phantoms: dict[str, Phantom], tmp_path: Path
) -> None:
    items = []
    for kind, phantom in small_phantoms.items():
        folder = write_phantom_series(phantom, tmp_path / kind)
        assert masks_path(folder).is_file()
        items.append(
            EvalSeries(
                series_id=kind,
                label=kind,
                patient_id=kind,
                source=folder,
                lesion_mask=lambda f=folder: read_phantom_truth(f).lesion_mask,
            )
        )
    items.append(EvalSeries(series_id="broken", label="normal", patient_id="x", source=tmp_path / "nothing-here"))
    (tmp_path / "nothing-here").mkdir()
    report = evaluate_series(tiny_predictor, items, out_dir=tmp_path / "out", overlays=2)
    json.dumps(report)  # serialisable
    assert report["series_count"] == 4 and report["no_decision_count"] == 1
    assert set(report["series_level"]) == {"top_k", "mean"}
    assert report["series_level"]["top_k"]["n"] == 3
    assert report["slice_level"]["n"] > 3
    loc = report["localisation"]
    assert (
        loc["series_with_lesions"] == 2 and 0.0 <= loc["dice_mean"] <= 1.0 and 0.0 <= loc["pointing_game_series"] <= 1.0
    )
    assert set(loc["per_class"]) == {"covid", "cap"} and set(loc["dice_mean_by_threshold"]) == {
        "0.2",
        "0.3",
        "0.4",
        "0.5",
        "0.6",
        "0.7",
        "0.8",
    }
    head = report["headline"]
    assert {"series_accuracy", "covid_vs_rest_auc", "pointing_game", "lesion_dice", "slice_accuracy"} <= set(head)
    figures = report["figures"]
    assert (
        "roc_series.png" in figures
        and "roc_slice.png" in figures
        and sum(f.startswith("overlay_") for f in figures) == 2
    )
    for name in figures:
        assert (tmp_path / "out" / name).stat().st_size > 1000
    assert "not for clinical use" in report["notice"].lower()


def test_heat_mass_inside_a_dilated_mask() -> None:
    heat = np.zeros((1, 20, 20), np.float32)
    heat[0, 5, 5] = 3.0
    heat[0, 15, 15] = 1.0
    lesion = np.zeros(heat.shape, bool)
    lesion[0, 5, 7] = True  # 2 mm from the first peak
    assert metrics.mass_inside(heat, lesion) == 0.0
    assert metrics.mass_inside(heat, metrics.dilate_mm(lesion, (1.0, 1.0, 1.0), 2.0)) == pytest.approx(0.75)
    assert metrics.mass_inside(np.zeros_like(heat), lesion) == 0.0
