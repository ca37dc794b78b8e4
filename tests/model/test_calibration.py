"""The series rule's calibration (model.training.calibration): temperature and class bias fitted by
likelihood, the indeterminate margin, the expected calibration error and its reliability bins.
Synthetic logits only; what calibration does to the shipped weights is in the model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.inference.multiscale_cam import settings_for
from model.inference.series_rule import softmax
from model.inference.weights import SHIPPED_WEIGHTS_DIR, read_metadata
from model.training.calibration import calibrate, fit_margin, fit_temperature_and_bias, reliability


def _overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits that rank well but are far too sure: a quarter of the series carry the wrong class's
    logit high, scaled x8."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    z = rng.normal(0.0, 1.0, (n, 3))
    shown = np.where(rng.random(n) < 0.75, y, rng.integers(0, 3, n))
    z[np.arange(n), shown] += 2.0
    return z * 8.0, y


def test_temperature_brings_an_overconfident_rule_close_to_its_accuracy() -> None:
    z, y = _overconfident()
    before = reliability(softmax(z), y)["ece"]
    t, bias, nll = fit_temperature_and_bias(z, y)
    after = reliability(softmax((z + np.asarray(bias)) / t), y)["ece"]
    assert t > 3.0 and len(bias) == 3 and bias[2] == 0.0
    assert before > 0.15 and after < min(0.08, before / 3)  # 600 series in 10 bins: sampling noise stays
    # the fit does not change which class is likeliest much: the bias is small against the logits
    assert np.mean(np.argmax(z + np.asarray(bias), axis=1) == np.argmax(z, axis=1)) > 0.95


def test_a_bias_moves_decisions_that_lean_one_way() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    z = rng.normal(0.0, 0.5, (300, 3))
    z[np.arange(300), y] += 2.0
    z[:, 1] += 1.5  # every series leans to the second class
    t, bias, _ = fit_temperature_and_bias(z, y)
    assert bias[1] - bias[0] < -1.0
    assert np.mean(np.argmax(z + np.asarray(bias), axis=1) == y) > np.mean(np.argmax(z, axis=1) == y)


def test_calibrating_on_a_set_decided_all_right_says_the_fit_has_nothing_to_weigh(tmp_path: Path) -> None:
    shutil.copyfile(SHIPPED_WEIGHTS_DIR / "metadata.json", tmp_path / "metadata.json")
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 20)
    z = rng.normal(0.0, 0.3, (60, 3))
    z[np.arange(60), y] += rng.uniform(3.0, 6.0, 60)
    report = {
        "series_logits": {"logits": z.tolist(), "labels": y.tolist()},
        "headline": {"series_accuracy": 1.0},
        "localisation": {},
    }
    chosen = calibrate(tmp_path, report)
    top = softmax((z + np.asarray(chosen["class_bias"])) / chosen["temperature"]).max(axis=1)
    assert chosen["series_accuracy_after"] == 1.0 and top.min() > 0.99  # near 1, as the warning says
    assert "every calibration series is decided right" in chosen["warning"]
    assert read_metadata(tmp_path)["inference"]["calibration"]["warning"] == chosen["warning"]
    # one wrong decision gives the fit an error to weigh: no warning
    y_wrong = y.copy()
    y_wrong[0] = 1
    report["series_logits"]["labels"] = y_wrong.tolist()
    assert "warning" not in calibrate(tmp_path, report)
    json.dumps(chosen)  # what the metadata stores is plain JSON


def test_the_region_threshold_stays_above_the_growth_threshold(tmp_path: Path) -> None:
    """The map's best Dice may lie at or under the threshold regions grow down to; the settings
    stored must still load (the threshold above grow_threshold)."""
    shutil.copyfile(SHIPPED_WEIGHTS_DIR / "metadata.json", tmp_path / "metadata.json")
    grow = read_metadata(tmp_path)["inference"]["localisation"]["grow_threshold"]
    assert grow == 0.2
    y = np.repeat([0, 1, 2], 10)
    z = np.eye(3)[y] * 3.0 + np.random.default_rng(4).normal(0.0, 1.0, (30, 3))
    report = {
        "series_logits": {"logits": z.tolist(), "labels": y.tolist()},
        "headline": {"series_accuracy": 0.9},
        "localisation": {"dice_mean_by_threshold": {"0.1": 0.70, "0.2": 0.69, "0.3": 0.65, "0.4": 0.6}},
    }
    assert calibrate(tmp_path, report)["threshold"] == 0.3
    settings_for(tmp_path)  # loads: the stored localisation settings are valid together


def test_fit_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError):
        fit_temperature_and_bias(np.zeros((2, 3)), [0])


def test_reliability_bins_count_every_series() -> None:
    p = np.array([[0.95, 0.05, 0.0], [0.9, 0.1, 0.0], [0.55, 0.45, 0.0], [0.4, 0.35, 0.25]])
    rel = reliability(p, [0, 1, 0, 2])
    assert sum(b["count"] for b in rel["bins"]) == 4
    # by hand: bins (0.3, 0.4] {0.4: wrong}, (0.5, 0.6] {0.55: right}, (0.8, 0.9] {0.9: wrong}, (0.9, 1] {0.95: right}
    assert rel["ece"] == pytest.approx((0.4 + 0.45 + 0.9 + 0.05) / 4)
    assert reliability(np.zeros((0, 3)), [])["ece"] is None


def test_fit_margin_leaves_the_fewest_wrong_decisions_and_keeps_the_floor() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.45, 0.30, 0.25], [0.34, 0.33, 0.33], [0.1, 0.1, 0.8]])
    labels = [0, 1, 2, 2]  # the second (margin 0.15) and third (0.01) are wrong
    margin, wrong = fit_margin(probs, labels)
    assert margin == pytest.approx(0.16) and wrong == 0
    assert fit_margin(probs[[0, 3]], [0, 2]) == (0.1, 0)  # nothing wrong: the floor
    assert fit_margin(np.array([[0.9, 0.05, 0.05]]), [1]) == (0.1, 1)  # can't be fixed: the floor
