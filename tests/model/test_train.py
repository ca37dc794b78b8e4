"""Training: patient-level folds, the schedules (step decay, cosine with warm-up and a time budget),
validation, best checkpoint, early stop, the recipes, series batches and the flip, and short runs
of both objectives (slice and multiple-instance) on synthetic blobs.

Covers model/training/train.py, augment.py and folder.py's resolve_init with tiny networks on small
images. Not covered here: the shipped weights' quality (``dicom-node model evaluate``, recorded in
model/weights/metadata.json) and the data layouts' readers (the data side's tests; the
``train_folder`` layouts are in test_cli.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from model.inference.network import NetworkOutput, WeaklySupervisedNet
from model.inference.preprocess import InputSpec
from model.inference.weights import SHIPPED_WEIGHTS_DIR
from model.training.augment import augment_batch, flip_batch
from model.training.batches import _mil_batch, _SeriesBatches
from model.training.folder import resolve_init
from model.training.recipes import recipe
from model.training.train import (
    TrainConfig,
    patient_folds,
    predict_slices,
    split_by_patient,
    train,
)

TINY: dict[str, Any] = {"widths": (4, 8, 8, 16, 16), "depths": (1, 1, 1, 1, 1)}


@dataclass
class _Series:
    series_id: str
    patient_id: str
    label: str
    slices: np.ndarray


def _blob_series(label: str, n: int, seed: int, size: int = 32, patient: str | None = None) -> _Series:
    """Slices whose class is a bright (covid), dark-square (cap) or absent (normal) blob."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 1, size, size)).astype(np.float32)
    for k in range(n):
        cy, cx = rng.integers(6, size - 6, 2)
        if label == "covid":
            x[k, 0, cy - 3 : cy + 3, cx - 3 : cx + 3] += 3.0
        elif label == "cap":
            x[k, 0, cy - 3 : cy + 3, cx - 3 : cx + 3] -= 3.0
    return _Series(f"{label}-{seed}", patient or f"p-{label}-{seed}", label, x)


def test_patient_folds_never_split_a_patient_and_are_stratified() -> None:
    patients = [f"p{i // 2}" for i in range(40)]  # two series per patient
    labels = [("covid", "cap", "normal", "covid")[(i // 2) % 4] for i in range(40)]
    folds = patient_folds(patients, labels, folds=5, seed=3)
    by_patient: dict[str, set[int]] = {}
    for p, f in zip(patients, folds):
        by_patient.setdefault(p, set()).add(f)
    assert all(len(f) == 1 for f in by_patient.values())
    assert set(folds) == set(range(5))
    for label in ("covid", "cap", "normal"):
        per_fold = [sum(1 for f, lb in zip(folds, labels) if f == k and lb == label) for k in range(5)]
        assert max(per_fold) - min(per_fold) <= 2
    assert patient_folds(patients, labels, 5, seed=3) == folds  # deterministic


def test_split_by_patient() -> None:
    series = [_blob_series(lb, 2, i, patient=f"p{i % 6}") for i, lb in enumerate(["covid", "cap", "normal"] * 4)]
    train_set, val_set = split_by_patient(series, folds=3, fold=1)
    assert {s.patient_id for s in train_set}.isdisjoint({s.patient_id for s in val_set})
    assert len(train_set) + len(val_set) == len(series) and val_set
    everything, none = split_by_patient(series, folds=1, fold=0)
    assert len(everything) == len(series) and none == []


def test_config_validation() -> None:
    assert TrainConfig().to_json()["iterations"] == 10_000  # the paper's defaults
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(input=InputSpec(height=100, width=100))
    with pytest.raises(ValueError):
        TrainConfig(fold=5, folds=5)
    with pytest.raises(ValueError):
        TrainConfig(batch_size=0)


@pytest.mark.slow
def test_training_learns_blobs_keeps_best_and_stops_early() -> None:
    train_set = [_blob_series(lb, 16, seed) for seed, lb in enumerate(["covid", "cap", "normal"] * 2)]
    val_set = [_blob_series(lb, 8, 100 + seed) for seed, lb in enumerate(["covid", "cap", "normal"])]
    config = TrainConfig(
        input=InputSpec(height=32, width=32),
        batch_size=12,
        iterations=120,
        learning_rate=3e-3,
        lr_step=20,
        validate_every=10,
        patience=20,
        **TINY,
    )
    seen: list[int] = []
    result = train(train_set, val_set, config, on_validation=lambda it, m: seen.append(it))
    assert result.best_val_accuracy is not None and result.best_val_accuracy >= 0.6  # chance: 1/3
    assert result.stopped_early and result.iterations_run < 120
    assert result.iterations_run - result.best_iteration >= 20
    assert seen == [int(h["iteration"]) for h in result.history]
    # The history logs the learning rate of the iteration just run: the step schedule's.
    lrs = {int(h["iteration"]): h["lr"] for h in result.history}
    assert lrs[10] == pytest.approx(3e-3) and all(
        lr == pytest.approx(config.learning_rate_at(it - 1)) for it, lr in lrs.items()
    )
    # The returned network is the best checkpoint.
    logits = predict_slices(result.network, np.concatenate([s.slices for s in val_set]), torch.device("cpu"))
    truth = np.repeat([0, 1, 2], 8)
    assert float((logits.argmax(1) == truth).mean()) == pytest.approx(result.best_val_accuracy)
    assert result.class_weights == pytest.approx([3.0, 3.0, 3.0])


@pytest.mark.slow
def test_training_without_validation_runs_all_iterations() -> None:
    train_set = [_blob_series(lb, 4, seed) for seed, lb in enumerate(["covid", "normal"])]
    config = TrainConfig(
        input=InputSpec(height=32, width=32), batch_size=4, iterations=5, classes=("covid", "normal"), **TINY
    )
    result = train(train_set, [], config)
    assert result.iterations_run == 5 and result.best_val_accuracy is None and not result.stopped_early
    assert result.network.num_classes == 2 and not result.network.training


def test_training_rejects_unknown_labels_and_too_little_data() -> None:
    config = TrainConfig(
        input=InputSpec(height=32, width=32), batch_size=4, iterations=1, classes=("covid", "normal"), **TINY
    )
    with pytest.raises(ValueError, match="not in"):
        train([_blob_series("cap", 8, 0)], [], config)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train([_blob_series("covid", 1, 0), _blob_series("normal", 1, 1)], [], config)
    with pytest.raises(ValueError, match="no training samples"):
        train([_blob_series("covid", 8, 0)], [], config)
    assert dataclasses.replace(config, fold=0).fold == 0


def test_time_budget_checkpoint_and_augmentation(tmp_path: Path) -> None:
    train_set = [_blob_series(lb, 4, seed) for seed, lb in enumerate(["covid", "normal"])]
    config = TrainConfig(
        input=InputSpec(height=32, width=32),
        batch_size=4,
        iterations=50,
        classes=("covid", "normal"),
        augment="flip+affine",
        max_minutes=1e-6,
        **TINY,
    )
    checkpoint = tmp_path / "best.pt"
    result = train(train_set, train_set[:1], config, checkpoint=checkpoint)
    assert result.iterations_run == 1 and result.stopped_early and len(result.history) == 1
    saved = torch.load(checkpoint)
    assert saved["iteration"] == 1 and set(saved["state_dict"]) == set(result.network.state_dict())


def test_augmentation_flips_left_right_only() -> None:
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 2, 1] = 1.0
    out = augment_batch(x, torch.Generator().manual_seed(0), shift=0.0, scale=0.0, degrees=0.0)
    rows_cols = {tuple(out[i, 0].nonzero()[0].tolist()) for i in range(64)}
    assert rows_cols == {(2, 1), (2, 6)}


def test_learning_rate_schedules() -> None:
    step = TrainConfig(learning_rate=1e-3, lr_step=10, lr_gamma=0.1)
    assert [step.learning_rate_at(i) for i in (0, 9, 10, 25)] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    cosine = TrainConfig(learning_rate=1e-3, schedule="cosine", warmup=10, iterations=110)
    assert cosine.learning_rate_at(0) == pytest.approx(1e-4) and cosine.learning_rate_at(9) == pytest.approx(1e-3)
    assert cosine.learning_rate_at(10) == pytest.approx(1e-3) and cosine.learning_rate_at(60) == pytest.approx(0.51e-3)
    assert cosine.learning_rate_at(110) == pytest.approx(0.02e-3)
    # With a time budget the decay follows whichever ends first: the iterations or the minutes.
    budget = dataclasses.replace(cosine, max_minutes=10.0)
    assert budget.learning_rate_at(10, elapsed_minutes=5.0) == pytest.approx(0.51e-3)


def test_recipes_and_config_round_trip() -> None:
    cpu = recipe("cpu")
    assert cpu.objective == "mil" and cpu.input.crop == "lungs" and cpu.selection == "val_series_accuracy"
    assert recipe("auto", "cpu") == cpu and recipe("auto", "cuda").recipe == "paper"
    assert recipe("cpu", iterations=7, batch_size=None).iterations == 7  # None: the recipe's value
    assert TrainConfig.from_json(cpu.to_json()) == cpu
    old = TrainConfig.from_json({"image_size": 96, "augment": True, "iterations": 5})
    assert old.input == InputSpec(height=96, width=96) and old.augment == "flip+affine"
    with pytest.raises(ValueError, match="recipe"):
        recipe("gpu")
    with pytest.raises(ValueError, match="mil_k"):
        TrainConfig(objective="mil", mil_candidates=2, mil_k=3)


def test_resolve_init_starts_from_the_shipped_weights_only_where_they_fit() -> None:
    cpu = recipe("cpu")
    shipped = resolve_init("auto", cpu)
    assert (
        shipped is not None and shipped.weights_dir == SHIPPED_WEIGHTS_DIR
    )  # the shipped weights are the cpu recipe's
    assert resolve_init("none", cpu) is None and resolve_init(None, cpu) is None
    other_input = dataclasses.replace(cpu, input=dataclasses.replace(cpu.input, height=32, width=64))
    assert resolve_init("auto", other_input) is None  # another input: from scratch
    named = resolve_init(SHIPPED_WEIGHTS_DIR, other_input)
    assert named is not None and named.weights_dir == SHIPPED_WEIGHTS_DIR  # named: the network is convolutional
    assert resolve_init("auto", recipe("paper")) is None
    with pytest.raises(ValueError, match="classes"):
        resolve_init(SHIPPED_WEIGHTS_DIR, dataclasses.replace(cpu, classes=("covid", "normal")))


def test_series_batches_take_the_classes_in_turn() -> None:
    series = [_blob_series(lb, 3, seed) for seed, lb in enumerate(["covid"] * 5 + ["cap"] * 2 + ["normal"] * 3)]
    batches = _SeriesBatches(series, ("covid", "cap", "normal"), np.random.default_rng(0))
    drawn = [series[i].label for i in batches.next(30)]
    assert drawn == ["covid", "cap", "normal"] * 10
    # Every series of a class is used before any is used again.
    caps = [i for i in batches.next(30) if series[i].label == "cap"]
    assert sorted(caps[:2]) == [5, 6]


class _BrightnessNet(torch.nn.Module):
    """Beside the unit: a 'network' whose abnormality is a slice's mean value (covid logit)."""

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        score = x.mean(dim=(1, 2, 3))
        logits = torch.stack([score, torch.zeros_like(score), -score], dim=1)
        return NetworkOutput(cams=[], logits=[logits])


def test_mil_memory_keeps_a_series_best_slices_among_its_next_candidates() -> None:
    # One bright slice of a hundred: 16 random candidates hold it about one visit in six; with a
    # memory of 4, once drawn it stays the series' top slice at every later visit.
    x = np.zeros((100, 1, 8, 8), dtype=np.float32)
    x[57] = 1.0
    series = [_Series("s", "p", "covid", x)]
    found = {}
    for memory_size in (0, 4):
        config = TrainConfig(objective="mil", mil_candidates=16, mil_k=2, mil_memory=memory_size)
        rng = np.random.default_rng(3)
        memory: dict[int, np.ndarray] = {}
        tops = []
        for _ in range(60):
            net = cast(WeaklySupervisedNet, _BrightnessNet())
            out = _mil_batch(net, series, [0], config, ("covid", "cap", "normal"), rng, torch.device("cpu"), memory)
            tops.append(bool(out[0].max() > 0.5))
        first = tops.index(True)
        found[memory_size] = (first, sum(tops[first:]), len(tops) - first)
        if memory_size:
            assert list(memory) == [0] and memory[0].size == 4 and memory[0][0] == 57
        else:
            assert memory == {}
    first, hits, visits = found[4]
    assert hits == visits  # never lost once found
    first, hits, visits = found[0]
    assert hits < visits / 2  # without the memory it is mostly missed
    with pytest.raises(ValueError, match="mil_memory"):
        TrainConfig(objective="mil", mil_candidates=4, mil_k=2, mil_memory=5)


def test_flip_batch_flips_some_slices_left_right() -> None:
    x = torch.zeros(64, 1, 4, 6)
    x[:, 0, 1, 0] = 1.0
    out = flip_batch(x, torch.Generator().manual_seed(0))
    cols = {int(out[i, 0, 1].nonzero()[0]) for i in range(64)}
    assert cols == {0, 5}


@pytest.mark.slow
def test_mil_training_learns_series_whose_lesions_are_on_few_slices() -> None:
    """Multiple-instance training: a disease series has its blob on 2 of 8 slices only, the rest
    look normal. The series rule (top-k) must learn the series labels."""

    def series(label: str, seed: int) -> _Series:
        s = _blob_series(label, 8, seed)
        if label != "normal":
            s.slices[2:] = _blob_series("normal", 6, seed + 1000).slices
        return s

    train_set = [series(lb, seed) for seed, lb in enumerate(["covid", "cap", "normal"] * 6)]
    val_set = [series(lb, 100 + seed) for seed, lb in enumerate(["covid", "cap", "normal"] * 2)]
    # One run is a coin with a bias, not a fact: the network picks its own top-k slices, and a run
    # whose first picks are blob-free can settle on them. Which seeds do depends on the CPU's kernels
    # and thread count (seed 0 of the TINY network at batch 6 reached 0.83 with AVX-512 and 0.5 with
    # AVX2 on one thread). With these widths and 12 series a batch, 70 of 72 runs (seeds 0-23 under
    # AVX-512 on 1 thread, AVX2 on 1 and on 2 threads) reached 0.8; so the claim is made of the
    # median of three seeds.
    config = TrainConfig(
        input=InputSpec(height=32, width=32),
        objective="mil",
        batch_size=12,
        mil_candidates=8,
        mil_k=2,
        iterations=300,
        learning_rate=3e-3,
        schedule="cosine",
        warmup=10,
        validate_every=25,
        patience=1000,
        widths=(8, 16, 16, 32, 32),
        depths=(1, 1, 1, 1, 1),
    )
    results = [train(train_set, val_set, dataclasses.replace(config, seed=seed)) for seed in range(3)]
    assert all(r.selection == "val_series_accuracy" and r.best_val_accuracy is not None for r in results)
    accuracies = sorted(float(r.best_val_accuracy or 0.0) for r in results)
    assert accuracies[1] >= 0.8, accuracies
    assert all("val_series_loss" in h for r in results for h in r.history)
