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
  covid, and a normal series shows its most suspicious-looking slices as hard negatives. The
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
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from platformdirs import user_cache_path
from tqdm import tqdm

from model.contract.notice import WEIGHTS_NOTICE
from model.contract.result import CLASSES
from model.inference.io import SeriesReadError
from model.inference.multiscale_cam import MIN_MARGIN_FLOOR, abnormality, aggregate_series
from model.inference.network import WeaklySupervisedNet
from model.inference.preprocess import PAPER_INPUT, InputSpec
from model.inference.weights import SHIPPED_WEIGHTS_DIR, LoadedModel, load_weights, save_weights
from model.training.choices import AUGMENTATIONS, OBJECTIVES, SCHEDULES
from model.training.datasets import PreparedDataset, discover, phantom_seeds, prepare_dataset, prepare_series
from model.training.loss import MultiScaleFocalLoss, class_balance_weights

log = logging.getLogger(__name__)

# Starting from trained weights (``--init``), the recipe's learning rate times this unless one is
# given: the recipe's rate is for Xavier-initialised weights and would first undo what they know.
FINE_TUNE_LR_FACTOR = 0.1


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
    iterations: int = 10_000
    learning_rate: float = 1e-4
    schedule: str = "step"  # "step": x lr_gamma every lr_step; "cosine": to 2 % at the end (iterations or max_minutes, whichever comes first)
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


class _SliceIndex:
    """All slices of a list of series, addressed by one flat index without copying the arrays."""

    def __init__(self, series: Sequence[SeriesSlices], classes: Sequence[str]) -> None:
        self.series = list(series)
        pairs: list[tuple[int, int]] = []
        labels: list[int] = []
        for si, s in enumerate(self.series):
            if s.label not in classes:
                raise ValueError(f"series {s.series_id}: label {s.label!r} not in {tuple(classes)}")
            y = list(classes).index(s.label)
            for k in range(s.slices.shape[0]):
                pairs.append((si, k))
                labels.append(y)
        self.pairs = pairs
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.stack(
            [np.asarray(self.series[self.pairs[i][0]].slices[self.pairs[i][1]], dtype=np.float32) for i in indices]
        )
        return torch.from_numpy(x), torch.from_numpy(self.labels[np.asarray(indices)])


class _SeriesBatches:
    """Batches of series for the "mil" objective: the classes in turn, each class's series in a
    shuffled order, reshuffled when used up."""

    def __init__(self, series: Sequence[SeriesSlices], classes: Sequence[str], rng: np.random.Generator) -> None:
        self.series = list(series)
        self.rng = rng
        self.by_class: list[list[int]] = []
        for name in classes:
            members = [i for i, s in enumerate(self.series) if s.label == name]
            if members:
                self.by_class.append(members)
        unknown = sorted({s.label for s in self.series} - set(classes))
        if unknown:
            raise ValueError(f"series labelled {unknown}, not among the classes {tuple(classes)}")
        self.queues: list[list[int]] = [[] for _ in self.by_class]
        self.turn = 0
        self.labels = np.asarray([list(classes).index(s.label) for s in self.series], dtype=np.int64)

    def next(self, size: int) -> list[int]:
        out = []
        for _ in range(size):
            c = self.turn % len(self.by_class)
            self.turn += 1
            if not self.queues[c]:
                self.queues[c] = [int(i) for i in self.rng.permutation(self.by_class[c])]
            out.append(self.queues[c].pop())
        return out


def flip_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random left-right flip per slice (up-down never: posterior stays posterior)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, shift: float = 0.06, scale: float = 0.1, degrees: float = 8.0
) -> torch.Tensor:
    """Random left-right flip and affine (shift as a fraction of the size, scale, rotation) per
    slice, bilinear, edges replicated. Up-down is never flipped (posterior signs stay posterior)."""
    n = x.shape[0]
    u = torch.rand(n, 5, generator=generator)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    s = 1.0 + scale * (2 * u[:, 1] - 1)
    a = torch.deg2rad(degrees * (2 * u[:, 2] - 1))
    tx, ty = shift * 2 * (2 * u[:, 3] - 1), shift * 2 * (2 * u[:, 4] - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip * torch.cos(a) / s
    theta[:, 0, 1] = -torch.sin(a) / s
    theta[:, 1, 0] = flip * torch.sin(a) / s
    theta[:, 1, 1] = torch.cos(a) / s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _prepare(network: WeaklySupervisedNet, device: torch.device) -> WeaklySupervisedNet:
    network.to(device)
    if device.type == "cuda":
        network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to(memory_format=...) is documented; torch's overloads omit it
    return network


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@torch.inference_mode()
def predict_slices(
    network: WeaklySupervisedNet, slices: np.ndarray | torch.Tensor, device: torch.device, batch: int = 64
) -> np.ndarray:
    """Mean-over-scales logits (n, classes) of pre-processed slices; eval mode; AMP on CUDA."""
    network.eval()
    out: list[np.ndarray] = []
    for start in range(0, slices.shape[0], batch):
        x = torch.from_numpy(np.array(slices[start : start + batch], dtype=np.float32))
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = network(_to_device(x, device)).mean_logits
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


def _mil_batch(
    network: WeaklySupervisedNet,
    series: Sequence[SeriesSlices],
    chosen: Sequence[int],
    config: TrainConfig,
    classes: Sequence[str],
    rng: np.random.Generator,
    device: torch.device,
) -> torch.Tensor:
    """The "mil" objective's input: per chosen series, the ``mil_k`` most abnormal of
    ``mil_candidates`` random lung slices, as (series * k, 1, H, W), scored in one eval pass."""
    picks = []
    for i in chosen:
        n = series[i].slices.shape[0]
        cand = np.sort(rng.choice(n, size=min(n, config.mil_candidates), replace=False))
        picks.append(np.asarray(series[i].slices[cand], dtype=np.float32))
    sizes = [len(p) for p in picks]
    x = torch.from_numpy(np.concatenate(picks))
    network.eval()
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        score = abnormality(network(_to_device(x, device)).mean_logits.float().cpu().numpy(), classes)
    out, start = [], 0
    for size in sizes:
        order = np.argsort(-score[start : start + size], kind="stable")
        top = order[np.arange(config.mil_k) % size]  # a series with fewer lung slices repeats its best
        out.append(x[start + top])
        start += size
    return torch.cat(out)


def train(
    train_series: Sequence[SeriesSlices],
    val_series: Sequence[SeriesSlices],
    config: TrainConfig = TrainConfig(),
    progress: bool = False,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: Path | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train one network; keep the checkpoint with the best validation figure (``config.selection``).

    Without validation series the last iteration's weights are kept and there is no early stop.
    ``checkpoint``: also write the best state so far there (``torch.save``), so a run that is
    killed still leaves its best weights. ``init_state``: start from these weights (fine-tuning,
    e.g. the shipped weights on local data, or a larger input size) instead of Xavier. ``config.max_minutes`` ends training early (after a
    last validation) when the wall time is spent.
    """
    seed_everything(config.seed)
    device = torch.device(config.device)
    classes = tuple(config.classes)
    mil = config.objective == "mil"
    rng = np.random.default_rng(config.seed)
    if mil:
        batches = _SeriesBatches(train_series, classes, rng)
        labels = batches.labels
        if len(batches.series) < 1:
            raise ValueError("no training series")
    else:
        data = _SliceIndex(train_series, classes)
        labels = data.labels
        if len(data) < config.batch_size:
            raise ValueError(f"{len(data)} training slices, fewer than one batch of {config.batch_size}")
    alpha = class_balance_weights(labels, len(classes))
    network = WeaklySupervisedNet(
        num_classes=len(classes), widths=config.widths, depths=config.depths, dropout=config.dropout
    )
    if init_state is not None:
        network.load_state_dict(init_state, strict=True)
    network = _prepare(network, device)
    loss_fn = MultiScaleFocalLoss(alpha=alpha, gamma=config.focal_gamma).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate, foreach=True)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    aug_gen = torch.Generator().manual_seed(config.seed)

    def batches_forever() -> Any:
        if mil:
            while True:
                chosen = batches.next(config.batch_size)
                x = _mil_batch(network, batches.series, chosen, config, classes, rng, device)
                yield x, torch.from_numpy(labels[np.asarray(chosen)])
        while True:
            order = rng.permutation(len(data))
            for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
                yield data.batch(order[start : start + config.batch_size])

    best_state = copy.deepcopy(network.state_dict())
    best_key: tuple[float, float] | None = None
    best_acc: float | None = None
    best_iter = 0
    last_improvement = 0
    history: list[dict[str, float]] = []
    if init_state is not None and val_series:
        # The starting weights are a candidate too: training on a small set must not end worse
        # than where it started.
        metrics = validate(network, val_series, classes, device, batch=config.eval_batch)
        metrics.update(iteration=0.0, lr=0.0, seconds=0.0)
        best_acc = metrics[config.selection]
        best_key = (best_acc, -metrics["val_series_loss"]) if mil else (best_acc, 0.0)
        metrics["best_" + config.selection] = float(best_acc)
        history.append(metrics)
        log.info("iteration 0 (the starting weights): %s", {k: round(v, 4) for k, v in metrics.items()})
    stopped_early = False
    started = time.monotonic()
    iteration = 0
    running_loss = 0.0
    bar = tqdm(total=config.iterations, desc="train", unit="it", dynamic_ncols=True) if progress else None
    try:
        for x, y in batches_forever():
            lr = config.learning_rate_at(iteration, (time.monotonic() - started) / 60.0)
            for group in optimiser.param_groups:
                group["lr"] = lr
            network.train()
            if config.augment != "none":
                x = flip_batch(x, aug_gen) if config.augment == "flip" else augment_batch(x, aug_gen)
            x, y = _to_device(x, device), y.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                out = network(x)
            logits = [lg.view(len(y), -1, lg.shape[-1]).mean(dim=1) for lg in out.logits] if mil else out.logits
            loss = loss_fn(logits, y)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            iteration += 1
            running_loss = loss.item() if iteration == 1 else 0.95 * running_loss + 0.05 * loss.item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{running_loss:.4f}", best=f"{best_acc:.3f}" if best_acc is not None else "-")
            out_of_time = config.max_minutes is not None and time.monotonic() - started > 60.0 * config.max_minutes
            last = iteration >= config.iterations or out_of_time
            if val_series and (iteration % config.validate_every == 0 or last):
                metrics = validate(network, val_series, classes, device, batch=config.eval_batch)
                metrics.update(
                    iteration=float(iteration), train_loss=running_loss, lr=lr, seconds=time.monotonic() - started
                )
                acc = metrics[config.selection]
                key = (acc, -metrics["val_series_loss"]) if mil else (acc, 0.0)
                if best_key is None or key > best_key:
                    best_key, best_acc, best_iter, last_improvement = key, acc, iteration, iteration
                    best_state = copy.deepcopy(network.state_dict())
                    if checkpoint is not None:
                        torch.save({"state_dict": best_state, "iteration": iteration, "metrics": metrics}, checkpoint)
                metrics["best_" + config.selection] = float(best_acc if best_acc is not None else acc)
                history.append(metrics)
                log.info("iteration %d: %s", iteration, {k: round(v, 4) for k, v in metrics.items()})
                if on_validation is not None:
                    on_validation(iteration, metrics)
                if iteration - last_improvement >= config.patience:
                    stopped_early = True
                    break
            if last:
                if out_of_time:
                    log.info("stopping at iteration %d: the %.1f minute budget is spent", iteration, config.max_minutes)
                    stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
    if not val_series:
        best_state, best_iter = copy.deepcopy(network.state_dict()), iteration
    network.load_state_dict(best_state)
    network.to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # Module.to(memory_format=...) is documented; torch's overloads omit it
    network.eval()
    return TrainResult(
        network=network,
        best_iteration=best_iter,
        best_val_accuracy=best_acc,
        iterations_run=iteration,
        stopped_early=stopped_early,
        seconds=time.monotonic() - started,
        history=history,
        class_weights=[float(a) for a in alpha],
        selection=config.selection,
    )


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


def _default_cache_dir() -> Path:
    return user_cache_path("covid-ct-node") / "slices"


def _describe_data(
    data_dir: Path,
    labels_csv: Path | None,
    series: Sequence[SeriesSlices],
    skipped: Sequence[tuple[Any, str]],
    records: Sequence[Any],
) -> dict[str, Any]:
    per_class: dict[str, int] = {}
    for s in series:
        per_class[s.label] = per_class.get(s.label, 0) + 1
    out: dict[str, Any] = {
        "folder": str(data_dir),
        "labels": str(labels_csv) if labels_csv else None,
        "layouts": sorted({r.layout for r in records}),
        "series": len(series),
        "patients": len({s.patient_id for s in series}),
        "per_class": per_class,
        "lung_slices": int(sum(s.slices.shape[0] for s in series)),
        "skipped": [{"series": r.series_id, "reason": why} for r, why in skipped],
    }
    seeds = phantom_seeds(records)
    if seeds:
        out["phantom_seeds"] = seeds
        out["synthetic"] = "model.phantoms chest CT phantoms (dicom-node phantom-dataset): synthetic, not patients"
    return out


def _prepare_one(args: tuple[Any, Path, InputSpec]) -> tuple[Any, Any, str | None]:
    torch.set_num_threads(1)
    record, cache, spec = args
    try:
        return record, prepare_series(record, cache, spec=spec), None
    except (SeriesReadError, ValueError) as exc:
        return record, None, str(exc)


def _prepare_parallel(
    records: Sequence[Any], cache: Path, spec: InputSpec, workers: int, tick: Callable[[int, int, Any], None] | None
) -> Any:
    """model.training.datasets.prepare_dataset over ``workers`` processes (same cache, same skipping)."""

    out = PreparedDataset(series=[])
    by_id: dict[str, Any] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, (record, cached, error) in enumerate(
            pool.map(_prepare_one, [(r, cache, spec) for r in records]), start=1
        ):
            if cached is None:
                log.warning("skipping %s: %s", record.series_id, error)
                out.skipped.append((record, str(error)))
            else:
                by_id[record.series_id] = cached
            if tick is not None:
                tick(i, len(records), record)
    out.series = [by_id[r.series_id] for r in records if r.series_id in by_id]
    return out


def default_metadata(config: TrainConfig, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """The metadata of freshly trained weights, before data and metrics are added."""
    classes = list(config.classes)
    return {
        "name": name
        or ("covid-ct-multiscale-cam" if len(classes) == 3 else "covid-ct-multiscale-cam-" + "-".join(classes)),
        "version": version or "0.0.0+local",
        "classes": classes,
        "method": "Hu et al., IEEE Access 8 (2020), doi:10.1109/ACCESS.2020.3005510: 2D multi-scale CAM network, weak (series) labels",
        "input": config.input.to_json(),
        "aggregation": {
            "rule": "top_k",
            "description": "series logits = mean of the mean-over-scales slice logits over the k most abnormal lung slices "
            "(1 - p(normal)), k = max(top_k_min, ceil(top_k_fraction * lung slices)); softmax; decision = argmax",
        },
        "inference": {
            "aggregation": "top_k",
            "top_k_fraction": 0.1,
            "top_k_min": 3,
            "min_lung_slices": 5,
            "min_margin": MIN_MARGIN_FLOOR,
            "localisation": {
                "mode": "auto",
                "ig_slices": 8,
                "threshold": 0.5,
                "cam_floor": 0.3,
                "consolidation_hu": -300.0,
                "consolidation_opening_mm": 4.0,
            },
        },
        "training": {"config": config.to_json()},
        "notice": WEIGHTS_NOTICE,
    }


def _result_json(result: TrainResult) -> dict[str, Any]:
    return {
        "best_iteration": result.best_iteration,
        "selection": result.selection,
        "best_val_value": result.best_val_accuracy,
        "iterations_run": result.iterations_run,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 1),
        "class_weights": result.class_weights,
        "history": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in h.items()} for h in result.history],
    }


def resolve_init(init: str | Path | None, config: TrainConfig) -> LoadedModel | None:
    """The weights training starts from, loaded (None: from scratch): ``init`` a folder (same classes and network as
    ``config``, else ValueError; another input size is allowed: the network is convolutional),
    "none" (or None) from scratch, "auto" the shipped weights when their classes, network and input
    preparation are all those of ``config`` (else from scratch)."""
    if init is None or str(init) == "none":
        return None
    folder = SHIPPED_WEIGHTS_DIR if str(init) == "auto" else Path(init)
    if str(init) == "auto" and not (folder / "model.safetensors").is_file():
        return None
    loaded = load_weights(folder)
    wanted = WeaklySupervisedNet(
        num_classes=len(config.classes), widths=config.widths, depths=config.depths, dropout=config.dropout
    ).architecture()
    differs = [
        what
        for what, same in (
            ("classes", loaded.classes == tuple(config.classes)),
            ("network", loaded.network.architecture() == dict(wanted)),
            ("input", loaded.input_spec == config.input or str(init) != "auto"),
        )
        if not same
    ]
    if not differs:
        return loaded
    if str(init) == "auto":
        log.info("training from scratch: the shipped weights' %s differ from the configuration's", ", ".join(differs))
        return None
    raise ValueError(f"--init {folder}: its {', '.join(differs)} differ from the training configuration's")


def train_folder(
    data_dir: Path,
    labels_csv: Path | None,
    out_dir: Path,
    config: TrainConfig = TrainConfig(),
    *,
    cross_validate: bool = False,
    name: str | None = None,
    version: str | None = None,
    cache_dir: Path | None = None,
    log_file: Path | None = None,
    progress: bool = False,
    workers: int = 1,
    init_weights: str | Path | None = None,
) -> dict[str, Any]:
    """Prepare (cached) slices of a data folder, train (one fold, or every fold with
    ``cross_validate``), and write weights + metadata to ``out_dir`` (``out_dir/fold-N`` per fold).
    ``workers`` > 1 prepares series in that many processes; ``init_weights`` (a weights folder of
    the same architecture and classes, or "auto"/"none": :func:`resolve_init`) starts training from those weights. Returns a summary (also
    in the metadata)."""
    handler = None
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.getLogger("model").addHandler(handler)
        logging.getLogger("model").setLevel(logging.INFO)
    try:
        data_dir, out_dir = Path(data_dir), Path(out_dir)
        records = discover(data_dir, labels_csv)
        unknown = sorted({r.label for r in records} - set(config.classes))
        if unknown:
            log.info("leaving out series labelled %s (not among the classes %s)", unknown, config.classes)
            records = [r for r in records if r.label in config.classes]
        cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        started = time.monotonic()
        bar = None
        if progress:
            bar = tqdm(total=len(records), desc="prepare", unit="series", dynamic_ncols=True)
        tick = (lambda i, n, r: bar.update(1)) if bar is not None else None
        if workers > 1:
            prepared = _prepare_parallel(records, cache, config.input, workers, tick)
        else:
            prepared = prepare_dataset(records, cache, spec=config.input, progress=tick)
        if bar is not None:
            bar.close()
        series = prepared.series
        log.info(
            "prepared %d series (%d skipped) in %.0f s", len(series), len(prepared.skipped), time.monotonic() - started
        )
        data_json = _describe_data(data_dir, labels_csv, series, prepared.skipped, records)
        summary: dict[str, Any] = {"data": data_json, "config": config.to_json(), "folds": []}
        init_state, init_meta = None, None
        loaded = resolve_init(init_weights, config)
        if loaded is not None:
            init_state = loaded.network.state_dict()
            init_meta = {
                "weights": str(loaded.weights_dir),
                "name": loaded.metadata["name"],
                "version": loaded.metadata["version"],
                "weights_sha256": loaded.metadata["weights_sha256"],
                "training": loaded.metadata.get("training", {}).get("config"),
            }
        folds = range(config.folds) if cross_validate and config.folds > 1 else [config.fold]
        for fold in folds:
            fold_config = dataclasses.replace(config, fold=fold)
            train_set, val_set = split_by_patient(series, fold_config.folds, fold, fold_config.seed)
            log.info("fold %d: %d training series, %d validation series", fold, len(train_set), len(val_set))
            target = out_dir / f"fold-{fold}" if cross_validate and config.folds > 1 else out_dir
            target.mkdir(parents=True, exist_ok=True)
            checkpoint = target / "best-checkpoint.pt"
            result = train(
                train_set, val_set, fold_config, progress=progress, checkpoint=checkpoint, init_state=init_state
            )
            meta = default_metadata(fold_config, name, version)
            meta["training"].update(_result_json(result))
            meta["training"]["fold"] = fold
            if init_meta is not None:
                meta["training"]["initialised_from"] = init_meta
            meta["training"]["train_series"] = [s.series_id for s in train_set]
            meta["training"]["validation_series"] = [s.series_id for s in val_set]
            meta["training_data"] = data_json
            save_weights(result.network, target, meta)
            checkpoint.unlink(missing_ok=True)
            summary["folds"].append(
                {
                    "fold": fold,
                    "weights": str(target),
                    "selection": config.selection,
                    "best_val_value": result.best_val_accuracy,
                    "best_iteration": result.best_iteration,
                    "iterations_run": result.iterations_run,
                }
            )
        accs = [f["best_val_value"] for f in summary["folds"] if f["best_val_value"] is not None]
        if len(accs) > 1:
            summary["cross_validation"] = {
                "selection": config.selection,
                "mean": float(np.mean(accs)),
                "std": float(np.std(accs)),
            }
            (out_dir / "cross_validation.json").write_text(json.dumps(summary, indent=2) + "\n")
        summary["seconds"] = round(time.monotonic() - started, 1)
        return summary
    finally:
        if handler is not None:
            logging.getLogger("model").removeHandler(handler)
            handler.close()
