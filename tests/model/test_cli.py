"""``dicom-node model train | evaluate | predict`` end to end on tiny phantom data sets.

Covers model/cli.py and model/training/folder.py's ``train_folder`` on each data layout (DICOM phantom data
set, NIfTI and CC-CCII replicas), with the full-width network at a 32-pixel input for a few
iterations (the layouts and the plumbing, not the learning), then evaluate and predict with the
weights it wrote; plus a short run that overfits a few phantoms. Not covered: the shipped weights'
quality (metadata.json) and GPU training (benchmarks/gpu_train.sh).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicom_node.cli import main
from model.inference.preprocess import InputSpec
from model.inference.series_rule import aggregate_series
from model.inference.weights import SHIPPED_WEIGHTS_DIR, read_metadata
from model.phantoms.dataset import write_phantom_dataset
from model.phantoms.writer import read_phantom_truth
from model.training.cache import prepare_dataset
from model.training.recipes import RECIPES
from model.training.replicas import write_ccccii_replica, write_nifti_replica
from model.training.train import TrainConfig, predict_slices, train


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom-set")
    write_phantom_dataset(out, 6, seed=5, rows=64, slices_min=16, slices_max=20, transfer_syntax="jpeg-ls")
    return out


def _train_args(data: Path, labels: Path | None, out: Path, cache: Path, folds: int = 2) -> list[str]:
    args = [
        "model",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--iterations",
        "3",
        "--batch",
        "4",
        "--input-size",
        "32x64",
    ]
    args += [
        "--validate-every",
        "2",
        "--folds",
        str(folds),
        "--cache",
        str(cache),
        "--no-progress",
        "--max-minutes",
        "5",
    ]
    return args + (["--labels", str(labels)] if labels is not None else [])


@pytest.mark.slow
def test_train_evaluate_predict_on_a_phantom_set(
    phantom_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "weights"
    assert (
        main(
            _train_args(phantom_set, phantom_set / "labels.csv", weights, tmp_path / "cache")
            + ["--version", "9.9.9", "--log", str(tmp_path / "train.log")]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["data"]["series"] == 6 and len(summary["data"]["phantom_seeds"]) == 6
    assert summary["data"]["phantom_mixes"] == {"default": 6}
    meta = read_metadata(weights)
    # The metadata ships: folder names only, never this machine's paths.
    assert str(tmp_path) not in json.dumps(meta) and meta["training_data"]["folder"] == phantom_set.name
    assert (
        meta["version"] == "9.9.9"
        and (meta["input"]["height"], meta["input"]["width"]) == (32, 64)
        and meta["training"]["config"]["iterations"] == 3
    )
    assert (
        meta["training"]["config"]["recipe"] == "cpu" and meta["input"]["crop"] == "lungs"
    )  # the default recipe on a CPU
    assert set(meta["training"]["train_series"]).isdisjoint(meta["training"]["validation_series"])
    assert not (weights / "best-checkpoint.pt").exists() and (tmp_path / "train.log").stat().st_size > 0
    # Fine-tuning from those weights (--init) records where it started.
    tuned = tmp_path / "tuned"
    assert (
        main(_train_args(phantom_set, phantom_set / "labels.csv", tuned, tmp_path / "cache") + ["--init", str(weights)])
        == 0
    )
    tuned_training = read_metadata(tuned)["training"]
    assert tuned_training["initialised_from"]["weights_sha256"] == meta["weights_sha256"]
    assert tuned_training["history"][0]["iteration"] == 0  # the starting weights are a candidate
    assert tuned_training["config"]["learning_rate"] == pytest.approx(0.1 * meta["training"]["config"]["learning_rate"])
    capsys.readouterr()

    out_json = tmp_path / "eval" / "metrics.json"
    evaluate = [
        "model",
        "evaluate",
        "--data",
        str(phantom_set),
        "--labels",
        str(phantom_set / "labels.csv"),
        "--weights",
        str(weights),
        "--json",
        str(out_json),
    ]
    assert (
        main([*evaluate, "--localisation", "cam", "--overlays", "1", "--no-progress", "--record", "validation_metrics"])
        == 0
    )
    report = json.loads(out_json.read_text())
    recorded = read_metadata(weights)["validation_metrics"]
    assert (
        recorded["series_count"] == 6
        and set(recorded["series_level"]) == {"top_k", "mean"}
        and recorded["phantom_seeds"]
    )
    # Every phantom whose lesion mask is not empty (a small segmental CAP may draw none at 48 px).
    lesioned = sum(read_phantom_truth(phantom_set / r["series"]).lesion_mask.any() for r in report["series"])
    assert report["series_count"] == 6 and report["localisation"]["series_with_lesions"] == lesioned >= 3
    assert (out_json.parent / "roc_series.png").is_file() and any(
        p.name.startswith("overlay_") for p in out_json.parent.iterdir()
    )
    capsys.readouterr()
    # Calibration: class bias, the indeterminate margin (never under the floor) and the region threshold.
    assert main([*evaluate, "--calibrate", "--overlays", "0", "--no-progress"]) == 0
    calibration = json.loads(capsys.readouterr().out)["calibration"]
    inference = read_metadata(weights)["inference"]
    assert inference["min_margin"] == calibration["min_margin"] >= 0.1 and len(inference["class_bias"]) == 3
    assert inference["localisation"]["threshold"] == calibration["threshold"]

    series = phantom_set / "series_0000"
    result_json, heat_npy = tmp_path / "result.json", tmp_path / "heat.npy"
    assert (
        main(
            [
                "model",
                "predict",
                str(series),
                "--weights",
                str(weights),
                "--json",
                str(result_json),
                "--heatmap",
                str(heat_npy),
                "--localisation",
                "cam+ig",
                "--ig-slices",
                "1",
            ]
        )
        == 0
    )
    result = json.loads(result_json.read_text())
    assert set(result["probabilities"]) == {"covid", "cap", "normal"}
    assert result["decision"] in ("covid", "cap", "normal", "indeterminate") and result["reason"]
    assert result["model"]["version"] == "9.9.9" and "notice" in result and isinstance(result["regions"], list)
    heat = np.load(heat_npy)
    n_files = len(list(series.iterdir()))
    assert heat.dtype == np.float32 and heat.shape == (n_files, 64, 64) and 0.0 <= heat.min() and heat.max() <= 1.0


@pytest.mark.slow
def test_train_with_the_defaults_starts_from_the_shipped_weights(
    phantom_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A site's retraining (`model train --data D --out W`): the cpu recipe, fine-tuning the
    shipped weights (same input and network); --init none trains from scratch."""
    common = [
        "model",
        "train",
        "--data",
        str(phantom_set),
        "--iterations",
        "2",
        "--batch",
        "3",
        "--folds",
        "2",
        "--cache",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "tuned")]) == 0
    assert "fine-tuning" in capsys.readouterr().err
    shipped = read_metadata(SHIPPED_WEIGHTS_DIR)
    tuned = read_metadata(tmp_path / "tuned")["training"]
    assert tuned["initialised_from"]["weights_sha256"] == shipped["weights_sha256"]
    # A tenth of the recipe's learning rate (the shipped weights may have been tuned at another one).
    assert tuned["config"]["learning_rate"] == pytest.approx(
        0.1 * RECIPES[shipped["training"]["config"]["recipe"]].learning_rate
    )
    assert main([*common, "--out", str(tmp_path / "scratch"), "--init", "none"]) == 0
    scratch = read_metadata(tmp_path / "scratch")["training"]
    assert (
        "initialised_from" not in scratch
        and scratch["config"]["learning_rate"] == RECIPES[shipped["training"]["config"]["recipe"]].learning_rate
    )
    assert main([*common, "--out", str(tmp_path / "bad"), "--init", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["nifti", "ccccii"])
def test_train_on_public_layouts(layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / layout
    if layout == "nifti":
        labels: Path | None = write_nifti_replica(data, 3, seed=2, rows=64, slices=20)
    else:
        write_ccccii_replica(data, 3, seed=2, rows=64, slices=20)
        labels = None
    weights = tmp_path / "weights"
    assert main(_train_args(data, labels, weights, tmp_path / "cache", folds=1)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["data"]["series"] == 3 and summary["data"]["layouts"] == [layout]
    assert read_metadata(weights)["training"]["iterations_run"] == 3


@pytest.mark.slow
def test_short_training_overfits_a_few_phantoms(tmp_path: Path) -> None:
    """A narrow network at 64 pixels learns its own few phantoms (series decisions)."""
    labels = write_phantom_dataset(tmp_path / "set", 3, seed=8, rows=64, slices_min=20, slices_max=20)
    series = prepare_dataset(
        tmp_path / "set", tmp_path / "cache", labels_csv=labels, spec=InputSpec(height=64, width=64)
    ).series
    config = TrainConfig(
        input=InputSpec(height=64, width=64),
        batch_size=12,
        iterations=60,
        learning_rate=1e-3,
        validate_every=20,
        patience=1000,
        widths=(8, 16, 32, 32, 32),
    )
    result = train(series, series, config)
    assert result.best_val_accuracy is not None and result.best_val_accuracy >= 0.8
    classes = config.classes
    for s in series:
        logits = predict_slices(result.network, np.asarray(s.slices), next(result.network.parameters()).device)
        probs, _ = aggregate_series(logits, classes)
        assert classes[int(np.argmax(probs))] == s.label, s.series_id


def test_evaluate_writes_into_weights_metadata_only_when_they_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = (SHIPPED_WEIGHTS_DIR / "metadata.json").read_bytes()
    for option in (["--calibrate"], ["--record", "held_out_metrics"]):
        assert main(["model", "evaluate", "--data", str(tmp_path), "--json", str(tmp_path / "m.json"), *option]) == 2
        assert "--weights" in capsys.readouterr().err
    assert (SHIPPED_WEIGHTS_DIR / "metadata.json").read_bytes() == shipped


def test_train_refuses_an_input_size_the_network_cannot_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "train", "--data", str(tmp_path), "--out", str(tmp_path / "w"), "--input-size", "50x96"])
    assert exit_info.value.code == 2 and "multiples of 32" in capsys.readouterr().err


def test_train_lungs_refuses_a_dense_lung_weight_that_is_not_above_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("0", "-3", "nan"):
        argv = ["model", "train-lungs", "--data", str(tmp_path), "--out", str(tmp_path / "w")]
        assert main([*argv, "--dense-lung-weight", bad]) == 2
        assert "dense_lung_weight must be a number above 0" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_train_lungs_records_folder_names_not_this_machines_paths(phantom_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "w"
    argv = ["model", "train-lungs", "--data", str(phantom_set), "--out", str(out), "--max-minutes", "0.02"]
    assert main([*argv, "--init", str(SHIPPED_WEIGHTS_DIR)]) == 0
    description = json.loads((out / "lungs.json").read_text())
    assert description["training"]["data"] == phantom_set.name
    assert description["training"]["init"] == SHIPPED_WEIGHTS_DIR.name
    assert str(tmp_path) not in json.dumps(description) and str(SHIPPED_WEIGHTS_DIR) not in json.dumps(description)
