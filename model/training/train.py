"""Training the multi-scale network, and patient-level k-fold cross-validation.

Two objectives (:class:`TrainConfig` ``objective``):

- "slice", the paper's: every slice of a series carries the series label (weak supervision).
  Batches are drawn from a shuffled permutation of all training slices, epoch after epoch,
  incomplete last batch dropped (as the authors' loop does). The checkpoint with the best
  validation slice accuracy is kept.
- "mil" (multiple-instance learning, ours): a batch is ``batch_size`` series, classes in turn; of
  each, ``mil_candidates`` random lung slices are scored by the network in eval mode, the
  ``mil_k`` most abnormal (1 - p(normal)) are run in training mode, and their mean logits per scale
  are the series logits the loss sees. That is the series rule of inference (top-k mean,
  model.inference.multiscale_cam), so a covid series is not taught that its lesion-free slices are
  covid, and a normal series shows its most suspicious-looking slices as hard negatives. With
  ``mil_memory`` m, a series' m most abnormal slices at its previous visit stay among its
  candidates (the rest random), so a small lesion, once found, is not lost to the next draw. The
  checkpoint with the best validation series accuracy (ties: the lower series loss) is kept.

The paper's defaults (:data:`model.training.recipes.PAPER`): image 224, batch 24, Adam at 1e-4
multiplied by 0.1 every 3000 iterations, at most 10,000 iterations, validation every 500, stop after
1000 iterations without improvement; the class-balanced focal loss with gamma 1 averaged over the
three scales; Xavier initialisation; 5 folds split by patient. The CPU recipe is in
model.training.recipes. Every value is a :class:`TrainConfig` field.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from model.contract.result import CLASSES
from model.inference.network import WeaklySupervisedNet, mixed_precision
from model.inference.preprocess import PAPER_INPUT, InputSpec
from model.inference.series_rule import aggregate_series
from model.training.augment import augment
from model.training.batches import batch_stream, to_device
from model.training.choices import AUGMENTATIONS, OBJECTIVES, SCHEDULES
from model.training.loss import MultiScaleFocalLoss, class_balance_weights

log = logging.getLogger(__name__)


class SeriesSlices(Protocol):
    """What training needs of a series: its label, its patient and its pre-processed lung slices."""

    @property
    def series_id(self) -> str: ...

    @property
    def patient_id(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def slices(self) -> np.ndarray:  # (n, 1, S, S) float32
        ...


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the paper's."""

    input: InputSpec = PAPER_INPUT
    objective: str = "slice"  # "slice" | "mil" (module docstring)
    batch_size: int = 24  # slices ("slice") or series ("mil")
    mil_candidates: int = 12
    mil_k: int = 4
    # "mil": how many of a series' most abnormal slices at its previous visit stay among its next
    # candidates (0: all candidates random, as before this option existed)
    mil_memory: int = 0
    iterations: int = 10_000
    learning_rate: float = 1e-4
    # "step": x lr_gamma every lr_step; "cosine": to 2 % at the end (iterations or max_minutes, whichever first)
    schedule: str = "step"
    lr_step: int = 3000
    lr_gamma: float = 0.1
    warmup: int = 0  # iterations of linear warm-up
    validate_every: int = 500
    patience: int = 1000
    focal_gamma: float = 1.0
    dropout: float = 0.5
    folds: int = 5
    fold: int = 0  # the validation fold
    seed: int = 0
    device: str = "cpu"
    classes: tuple[str, ...] = CLASSES
    widths: tuple[int, ...] = (32, 64, 128, 256, 256)
    depths: tuple[int, ...] = (2, 2, 3, 3, 3)
    eval_batch: int = 64
    max_minutes: float | None = None  # wall-time budget: stop (after a last validation) when spent
    # Not in the method (the authors trained without): "flip", a random left-right flip per
    # training slice; "flip+affine", also a small shift, scale and rotation.
    augment: str = "none"
    recipe: str = "custom"  # the name of the recipe these values came from (model.training.recipes)

    def __post_init__(self) -> None:
        for name in ("batch_size", "iterations", "validate_every", "folds", "eval_batch", "mil_candidates", "mil_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.mil_k > self.mil_candidates:
            raise ValueError(f"mil_k ({self.mil_k}) must not exceed mil_candidates ({self.mil_candidates})")
        if not 0 <= self.mil_memory <= self.mil_candidates:
            raise ValueError(f"mil_memory must be 0..mil_candidates ({self.mil_candidates}), got {self.mil_memory!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")
        if not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1}, got {self.fold}")
        if self.learning_rate <= 0 or self.lr_step < 1 or not 0 < self.lr_gamma <= 1:
            raise ValueError("learning_rate must be > 0, lr_step >= 1, lr_gamma in (0, 1]")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes!r}")

    @property
    def selection(self) -> str:
        """The validation figure that picks the checkpoint."""
        return "val_series_accuracy" if self.objective == "mil" else "val_slice_accuracy"

    def learning_rate_at(self, iteration: int, elapsed_minutes: float = 0.0) -> float:
        """The learning rate for ``iteration`` (0-based), ``elapsed_minutes`` into training."""
        if self.warmup and iteration < self.warmup:
            return self.learning_rate * (iteration + 1) / self.warmup
        if self.schedule == "step":
            return self.learning_rate * self.lr_gamma ** (iteration // self.lr_step)
        done = (iteration - self.warmup) / max(1, self.iterations - self.warmup)
        if self.max_minutes:
            done = max(done, elapsed_minutes / self.max_minutes)
        done = min(1.0, max(0.0, done))
        return self.learning_rate * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * done)))

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["input"] = self.input.to_json()
        for key in ("classes", "widths", "depths"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """The config of a weights' metadata ``training.config`` (older ones: ``image_size``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["input"] = (
            InputSpec.from_json(data["input"])
            if "input" in data
            else InputSpec(height=int(data.get("image_size", 224)), width=int(data.get("image_size", 224)))
        )
        if isinstance(values.get("augment"), bool):
            values["augment"] = "flip+affine" if values["augment"] else "none"
        for key in ("classes", "widths", "depths"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass
class TrainResult:
    """The best network (eval mode, on the CPU) and how training went."""

    network: WeaklySupervisedNet
    best_iteration: int
    best_val_accuracy: float | None  # of config.selection
    iterations_run: int
    stopped_early: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    selection: str = "val_slice_accuracy"  # what best_val_accuracy measures


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def patient_folds(patient_ids: Sequence[str], labels: Sequence[str], folds: int, seed: int = 0) -> list[int]:
    """A fold number per series; all series of a patient share a fold (never split a patient).

    Stratified: patients are grouped by their (first) label, shuffled, and dealt round-robin, so each
    fold gets a similar class mix.
    """
    if len(patient_ids) != len(labels):
        raise ValueError("patient_ids and labels differ in length")
    first_label: dict[str, str] = {}
    for pid, lab in zip(patient_ids, labels):
        first_label.setdefault(pid, lab)
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for lab in sorted(set(first_label.values())):
        pids = sorted(p for p, lb in first_label.items() if lb == lab)
        rng.shuffle(pids)
        for i, pid in enumerate(pids):
            fold_of[pid] = (offset + i) % folds
        offset += len(pids)
    return [fold_of[p] for p in patient_ids]


def split_by_patient(
    series: Sequence[SeriesSlices], folds: int, fold: int, seed: int = 0
) -> tuple[list[SeriesSlices], list[SeriesSlices]]:
    """(training, validation) series for ``fold`` of a patient-level k-fold split."""
    if folds < 2:
        return list(series), []
    assigned = patient_folds([s.patient_id for s in series], [s.label for s in series], folds, seed)
    train = [s for s, f in zip(series, assigned) if f != fold]
    val = [s for s, f in zip(series, assigned) if f == fold]
    return train, val


def _prepare(network: WeaklySupervisedNet, device: torch.device) -> WeaklySupervisedNet:
    network.to(device)
    if device.type == "cuda":
        network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to(memory_format=...) is documented; torch's overloads omit it
    return network


@torch.inference_mode()
def predict_slices(
    network: WeaklySupervisedNet, slices: np.ndarray | torch.Tensor, device: torch.device, batch: int = 64
) -> np.ndarray:
    """Mean-over-scales logits (n, classes) of pre-processed slices; eval mode; AMP on CUDA."""
    network.eval()
    out: list[np.ndarray] = []
    for start in range(0, slices.shape[0], batch):
        x = torch.from_numpy(np.array(slices[start : start + batch], dtype=np.float32))
        with mixed_precision(device):
            logits = network(to_device(x, device)).mean_logits
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, network.num_classes), dtype=np.float32)


def validate(
    network: WeaklySupervisedNet,
    series: Sequence[SeriesSlices],
    classes: Sequence[str],
    device: torch.device,
    loss_fn: MultiScaleFocalLoss | None = None,
    batch: int = 64,
) -> dict[str, float]:
    """Slice accuracy (the authors' selection metric), per-class slice accuracy, series accuracy.
    Series accuracy uses inference's series rule (model.inference.multiscale_cam)."""
    correct = total = 0
    per_class_correct = np.zeros(len(classes))
    per_class_total = np.zeros(len(classes))
    series_correct = 0
    series_loss = 0.0
    for s in series:
        y = list(classes).index(s.label)
        logits = predict_slices(network, s.slices, device, batch)
        pred = logits.argmax(axis=1)
        correct += int((pred == y).sum())
        total += len(pred)
        per_class_correct[y] += int((pred == y).sum())
        per_class_total[y] += len(pred)
        if len(pred):
            probs = aggregate_series(logits, classes)[0]
            series_correct += int(int(np.argmax(probs)) == y)
            series_loss += -math.log(max(float(probs[y]), 1e-12))
    out = {
        "val_slice_accuracy": correct / max(total, 1),
        "val_series_accuracy": series_correct / max(len(series), 1),
        "val_series_loss": series_loss / max(len(series), 1),
    }
    for c, name in enumerate(classes):
        if per_class_total[c]:
            out[f"val_slice_accuracy_{name}"] = float(per_class_correct[c] / per_class_total[c])
    return out


@dataclass
class _Best:
    """The best validation so far (``key``: the selection figure, then minus the series loss for
    "mil"), its weights and when it was reached."""

    mil: bool
    selection: str
    state: dict[str, torch.Tensor]
    key: tuple[float, float] | None = None
    value: float | None = None
    iteration: int = 0
    last_improvement: int = 0

    def consider(
        self, metrics: dict[str, float], iteration: int, network: torch.nn.Module, checkpoint: Path | None
    ) -> None:
        value = metrics[self.selection]
        key = (value, -metrics["val_series_loss"]) if self.mil else (value, 0.0)
        if self.key is None or key > self.key:
            self.key, self.value, self.iteration, self.last_improvement = key, value, iteration, iteration
            self.state = copy.deepcopy(network.state_dict())
            if checkpoint is not None:
                torch.save({"state_dict": self.state, "iteration": iteration, "metrics": metrics}, checkpoint)
        metrics["best_" + self.selection] = float(self.value if self.value is not None else value)


def train(
    train_series: Sequence[SeriesSlices],
    val_series: Sequence[SeriesSlices],
    config: TrainConfig | None = None,
    progress: bool = False,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Path | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train one network; keep the checkpoint with the best validation figure (``config.selection``).

    Without validation series the last iteration's weights are kept and there is no early stop.
    ``checkpoint``: also write the best state so far there (``torch.save``), so a run that is killed still
    leaves its best weights. ``init_state``: start from these weights (fine-tuning, e.g. the shipped weights
    on local data, or a larger input size) instead of Xavier. ``config.max_minutes`` ends training early
    (after a last validation) when the wall time is spent.
    """
    config = config or TrainConfig()
    seed_everything(config.seed)
    device, classes, mil = torch.device(config.device), tuple(config.classes), config.objective == "mil"
    rng = np.random.default_rng(config.seed)
    network = WeaklySupervisedNet(
        num_classes=len(classes), widths=config.widths, depths=config.depths, dropout=config.dropout
    )
    if init_state is not None:
        network.load_state_dict(init_state, strict=True)
    network = _prepare(network, device)
    labels, batches = batch_stream(train_series, config, network, rng)
    alpha = class_balance_weights(labels, len(classes))
    step = _Stepper(network, config, MultiScaleFocalLoss(alpha=alpha, gamma=config.focal_gamma).to(device))
    best = _Best(mil, config.selection, copy.deepcopy(network.state_dict()))
    history: list[dict[str, float]] = []
    if init_state is not None and val_series:
        # The starting weights are a candidate too: training on a small set must not end worse than where it started.
        metrics = validate(network, val_series, classes, device, batch=config.eval_batch)
        metrics.update(iteration=0.0, lr=0.0, seconds=0.0)
        best.consider(metrics, 0, network, None)
        history.append(metrics)
        log.info("iteration 0 (the starting weights): %s", {k: round(v, 4) for k, v in metrics.items()})
    stopped_early, iteration, started = False, 0, time.monotonic()
    bar = tqdm(total=config.iterations, desc="train", unit="it", dynamic_ncols=True) if progress else None
    try:
        for x, y in batches:
            lr = config.learning_rate_at(iteration, (time.monotonic() - started) / 60.0)
            running_loss = step(x, y, lr)
            iteration += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{running_loss:.4f}", best=f"{best.value:.3f}" if best.value is not None else "-")
            out_of_time = config.max_minutes is not None and time.monotonic() - started > 60.0 * config.max_minutes
            last = iteration >= config.iterations or out_of_time
            if val_series and (iteration % config.validate_every == 0 or last):
                metrics = validate(network, val_series, classes, device, batch=config.eval_batch)
                metrics.update(
                    iteration=float(iteration), train_loss=running_loss, lr=lr, seconds=time.monotonic() - started
                )
                best.consider(metrics, iteration, network, checkpoint)
                history.append(metrics)
                log.info("iteration %d: %s", iteration, {k: round(v, 4) for k, v in metrics.items()})
                if on_validation is not None:
                    on_validation(iteration, metrics)
                if iteration - best.last_improvement >= config.patience:
                    stopped_early = True
                    break
            if last:
                if out_of_time:
                    log.info("stopping at iteration %d: the %.1f minute budget is spent", iteration, config.max_minutes)
                stopped_early = out_of_time
                break
    finally:
        if bar is not None:
            bar.close()
    if not val_series:
        best.state, best.iteration = copy.deepcopy(network.state_dict()), iteration
    network.load_state_dict(best.state)
    network.to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # Module.to(memory_format=...) is documented; torch's overloads omit it
    network.eval()
    return TrainResult(
        network=network,
        best_iteration=best.iteration,
        best_val_accuracy=best.value,
        iterations_run=iteration,
        stopped_early=stopped_early,
        seconds=time.monotonic() - started,
        history=history,
        class_weights=[float(a) for a in alpha],
        selection=config.selection,
    )


class _Stepper:
    """One optimisation step (augmentation, forward, the loss on series or slice logits, backward,
    Adam with the given learning rate); returns the running mean of the loss."""

    def __init__(self, network: WeaklySupervisedNet, config: TrainConfig, loss_fn: MultiScaleFocalLoss) -> None:
        self.network, self.config, self.loss_fn = network, config, loss_fn
        self.device = torch.device(config.device)
        self.optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate, foreach=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        self.generator = torch.Generator().manual_seed(config.seed)
        self.running: float | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
        for group in self.optimiser.param_groups:
            group["lr"] = lr
        self.network.train()
        x = augment(x, self.config.augment, self.generator, self.config.input)
        x, y = to_device(x, self.device), y.to(self.device)
        # Training steps in float32: bfloat16 steps did not learn (a tiny network on blobs stayed at
        # chance where float32 reached 0.83); scoring (the candidates, validation) is bfloat16.
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            out = self.network(x)
        mil = self.config.objective == "mil"
        # The loss in float32 whatever the autocast computed the network in.
        scales = [lg.float() for lg in out.logits]
        logits = [lg.view(len(y), -1, lg.shape[-1]).mean(dim=1) for lg in scales] if mil else scales
        loss = self.loss_fn(logits, y)
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimiser)
        self.scaler.update()
        value = float(loss.item())
        self.running = value if self.running is None else 0.95 * self.running + 0.05 * value
        return self.running


def cross_validate(
    series: Sequence[SeriesSlices], config: TrainConfig = TrainConfig(), progress: bool = False
) -> list[TrainResult]:
    """Train one model per patient-level fold (validation = that fold); returns them in fold order."""
    results = []
    for fold in range(config.folds):
        train_set, val_set = split_by_patient(series, config.folds, fold, config.seed)
        log.info("fold %d/%d: %d training, %d validation series", fold + 1, config.folds, len(train_set), len(val_set))
        results.append(train(train_set, val_set, dataclasses.replace(config, fold=fold), progress=progress))
    return results


# -- from a data folder to a weights folder ---------------------------------------------------------
