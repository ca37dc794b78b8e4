"""Training the lung network (model.inference.lungnet) on series whose lungs are known: phantoms
(their masks file beside the series) or any series with a lung mask of the same geometry.

Every series is resampled once to the working grid (HU and mask); training draws random slabs
with their neighbours, augmented in position (rotation, scale, shift, left-right flip) and in
intensity (a gain and offset of the HU, noise), with the Dice + cross-entropy loss; validation is
the 3D Dice of whole held-out series on the working grid, and the best state is kept. The loss is
Dice plus a cross-entropy in which dense pixels (above -500 HU) near the lung border count
DENSE_WEIGHT times, on both sides of it: dense lung (consolidation, collapse: rare, and as dense as
the chest wall it touches) so that it is kept, and the dense tissue against the lung (effusion,
chest wall, diaphragm, mediastinum within BORDER_MM) so that it is not taken with it. Weighting only
the dense lung taught the network that dense tissue beside the lung is lung: its masks reached up to
2 cm into effusions and the chest wall beside consolidations. ``init`` starts from a weights folder's
lung network (fine-tuning) instead of from scratch.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.losses import DiceLoss
from torch.nn import functional as F

from model.inference import lungnet
from model.inference.lungnet import (
    WINDOW_HU,
    GridSpec,
    WorkGrid,
    build_lung_net,
    keep_lung_components,
    normalise,
    stack_neighbours,
)
from model.inference.network import mixed_precision
from model.inference.weights import load_lung_segmenter, save_lung_weights
from model.training.datasets import SeriesRecord, discover, load_volume, lung_truth

log = logging.getLogger(__name__)

# How much a dense lung pixel (above -500 HU: consolidation, collapse, dense ground glass) counts
# in the cross-entropy against an ordinary one.
DENSE_WEIGHT = 5.0
# Dense tissue outside the lungs counts DENSE_WEIGHT times within this distance of them (on the working
# grid of about 1.5 mm: a window of 2 * _BORDER_PIXELS + 1 pixels).
BORDER_MM = 15.0
_BORDER_PIXELS = 10
# A pixel the network gets wrong at the current step (its probability on the wrong side of 0.5)
# counts this many times more: the errors left after the first training are few and all of one kind
# (effusion beside a consolidation called lung, a consolidated segment against the heart called
# mediastinum), and in a plain mean they weigh nothing against the millions of pixels already right.
HARD_WEIGHT = 4.0


@dataclass
class LungSample:
    """One series on the working grid."""

    name: str
    hu: torch.Tensor  # (slabs, S, S) float16 HU
    mask: torch.Tensor  # (slabs, S, S) bool

    @property
    def lung_slabs(self) -> np.ndarray:
        return np.flatnonzero(self.mask.flatten(1).any(dim=1).numpy())

    @property
    def dense_slabs(self) -> np.ndarray:
        """Slabs with at least 20 working pixels of lung above -500 HU (consolidation, collapse)."""
        dense = (self.mask & (self.hu > -500.0)).flatten(1).sum(dim=1).numpy()
        return np.flatnonzero(dense >= 20)


@dataclass
class LungTrainResult:
    state: dict[str, torch.Tensor]
    best_dice: float
    best_iteration: int
    iterations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def prepare_lung_sample(record: SeriesRecord, spec: GridSpec | None = None) -> LungSample:
    """One series and its true lungs on the working grid ``spec`` (the default grid if None)."""
    volume = load_volume(record.source, record.layout)
    mask = lung_truth(record)
    if mask.shape != volume.hu.shape:
        raise ValueError(f"{record.series_id}: lung mask {mask.shape} does not match the series {volume.hu.shape}")
    grid = WorkGrid.for_series(volume.hu.shape, tuple(float(s) for s in volume.spacing), spec)  # type: ignore[arg-type]
    hu = grid.to_work(volume.hu, WINDOW_HU[0]).to(torch.float16)
    truth = grid.to_work(mask.astype(np.float32), 0.0) > 0.5
    return LungSample(record.series_id, hu, truth)


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine (rotation +-15 degrees, scale 0.85-1.15, shift +-8 %), left-right flip, HU gain
    and offset, noise; ``x`` (b, 3, S, S) HU, ``y`` (b, 1, S, S) float."""
    b = x.shape[0]
    u = torch.rand(b, 6, generator=gen)
    angle = (u[:, 0] - 0.5) * math.radians(30.0)
    scale = 0.85 + 0.3 * u[:, 1]
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, (u[:, 3] - 0.5) * 0.16], 1),
            torch.stack([sin * flip, cos, (u[:, 4] - 0.5) * 0.16], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    low = WINDOW_HU[0]
    x = F.grid_sample(x - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = 0.9 + 0.2 * torch.rand(b, 1, 1, 1, generator=gen)
    offset = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 80.0
    noise = torch.randn(x.shape, generator=gen) * (u[:, 5] * 30.0).view(b, 1, 1, 1)
    x = (x + 1000.0) * gain - 1000.0 + offset + noise
    return x, (y > 0.5).float()


def _batch(samples: Sequence[LungSample], size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random slabs with their neighbours: a third with dense lung where a series has it (the hard
    case: consolidation against the chest wall or the heart), a third with lung, a third anywhere
    (the neck and the abdomen teach what is not lung)."""
    xs, ys = [], []
    for _ in range(size):
        s = samples[int(rng.integers(len(samples)))]
        u = rng.random()
        pool = s.dense_slabs if u < 1 / 3 and s.dense_slabs.size else s.lung_slabs if u < 2 / 3 else np.arange(0)
        k = int(rng.choice(pool)) if pool.size else int(rng.integers(s.hu.shape[0]))
        xs.append(stack_neighbours(s.hu, torch.tensor([k])).float())
        ys.append(s.mask[k : k + 1, None].float())
    return torch.cat(xs), torch.cat(ys)


def series_dice(network: torch.nn.Module, samples: Sequence[LungSample], batch: int = 32) -> list[float]:
    """3D Dice per series on the working grid, after the component rule of inference."""
    network.eval()
    out = []
    with torch.inference_mode():
        for s in samples:
            x = normalise(s.hu.float())
            prob = torch.empty_like(x)
            for start in range(0, x.shape[0], batch):
                idx = torch.arange(start, min(x.shape[0], start + batch))
                with mixed_precision(torch.device("cpu")):
                    prob[idx] = torch.sigmoid(network(stack_neighbours(x, idx))[:, 0].float())
            pred = keep_lung_components(prob) > 0.5
            inter = float((pred & s.mask).sum())
            total = float(pred.sum() + s.mask.sum())
            out.append(2.0 * inter / total if total else 1.0)
    return out


def train_lung_net(
    train: Sequence[LungSample],
    val: Sequence[LungSample],
    *,
    max_minutes: float = 10.0,
    iterations: int = 100_000,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    validate_every: int = 200,
    seed: int = 0,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
    init: dict[str, torch.Tensor] | None = None,
    dense_lung_weight: float = DENSE_WEIGHT,
) -> LungTrainResult:
    """Train until ``iterations`` or ``max_minutes`` (cosine decay over the time budget); keep the
    state with the best mean validation Dice. ``init``: a state dict to start from.
    ``dense_lung_weight``: what a dense lung pixel near the border counts (:func:`pixel_weights`)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    network = build_lung_net()
    if init is not None:
        network.load_state_dict(init, strict=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    dice_loss = DiceLoss(sigmoid=True, batch=True)
    started = time.monotonic()
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    history: list[dict[str, float]] = []
    iteration = 0
    while True:
        elapsed = (time.monotonic() - started) / 60.0
        progress = min(1.0, max(iteration / iterations, elapsed / max_minutes))
        for group in optimiser.param_groups:
            group["lr"] = learning_rate * (
                min(1.0, (iteration + 1) / 50) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
            )
        x, y = _batch(train, batch_size, rng)
        x, y = _augment(x, y, gen)
        network.train()
        logits = network(normalise(x))  # training steps in float32 (model.training.train says why)
        weight = pixel_weights(x[:, 1:2], y, logits.detach(), dense_lung_weight)
        bce = F.binary_cross_entropy_with_logits(logits, y, weight=weight, reduction="sum") / weight.sum()
        loss = dice_loss(logits, y) + bce
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        iteration += 1
        last = progress >= 1.0
        if val and (iteration % validate_every == 0 or last):
            dice = series_dice(network, val)
            metrics = {
                "iteration": float(iteration),
                "loss": float(loss.item()),
                "val_dice": float(np.mean(dice)),
                "val_dice_min": float(np.min(dice)),
                "seconds": time.monotonic() - started,
            }
            history.append(metrics)
            log.info("lungs iteration %d: %s", iteration, {k: round(v, 4) for k, v in metrics.items()})
            if on_validation is not None:
                on_validation(iteration, metrics)
            if metrics["val_dice"] > best[0]:
                best = (
                    metrics["val_dice"],
                    iteration,
                    {k: v.detach().clone() for k, v in network.state_dict().items()},
                )
        if last:
            break
    if not best[2]:
        best = (float("nan"), iteration, network.state_dict())
    return LungTrainResult(best[2], best[0], best[1], iteration, time.monotonic() - started, history)


def pixel_weights(
    hu: torch.Tensor,
    lungs: torch.Tensor,
    logits: torch.Tensor | None = None,
    dense_lung_weight: float = DENSE_WEIGHT,
) -> torch.Tensor:
    """Cross-entropy weights of a batch, ``hu`` and ``lungs`` (b, 1, S, S): dense lung
    (consolidation, collapse, ground glass above -500 HU) is rare and looks like the chest wall,
    effusion and diaphragm it touches, so dense pixels on both sides of the lung border (within
    _BORDER_PIXELS of the lungs) count DENSE_WEIGHT times (the dense lung among them
    ``dense_lung_weight`` times); every other pixel once. With the step's ``logits`` (detached), a
    pixel on the wrong side of 0.5 counts HARD_WEIGHT times that."""
    near = F.max_pool2d(lungs, kernel_size=2 * _BORDER_PIXELS + 1, stride=1, padding=_BORDER_PIXELS)
    dense = near * (hu > -500.0).float()
    weight = 1.0 + dense * ((DENSE_WEIGHT - 1.0) + (dense_lung_weight - DENSE_WEIGHT) * lungs)
    if logits is not None:
        wrong = (logits > 0.0).float() != lungs
        weight = weight * torch.where(wrong, HARD_WEIGHT, 1.0)
    return weight


def lung_state(weights_dir: Path) -> tuple[dict[str, torch.Tensor], GridSpec]:
    """The lung network's state dict of a weights folder and the working grid it was trained on
    (ValueError when it has none)."""
    segmenter = load_lung_segmenter(weights_dir)
    if segmenter is None:
        raise ValueError(f"{weights_dir}: no lung network to start from (lungs.safetensors)")
    return {k: v.detach().clone() for k, v in segmenter.network.state_dict().items()}, segmenter.grid


def describe_training(
    result: LungTrainResult,
    train: Sequence[LungSample],
    val: Sequence[LungSample],
    dense_lung_weight: float = DENSE_WEIGHT,
) -> dict[str, Any]:
    return {
        "series": {"train": len(train), "validate": len(val)},
        "iterations": result.iterations,
        "best_iteration": result.best_iteration,
        "best_val_dice": round(result.best_dice, 4),
        "seconds": round(result.seconds, 1),
        "history": result.history,
        "loss": "Dice (MONAI DiceLoss, sigmoid) + cross-entropy with dense pixels (> -500 HU) within "
        f"{BORDER_MM:g} mm of the lungs (inside or outside) weighted x{DENSE_WEIGHT:g} (the dense lung among them "
        f"x{dense_lung_weight:g}), and every pixel the "
        f"network gets wrong at the step x{HARD_WEIGHT:g} more",
        "augmentation": "rotation +-15 deg, scale 0.85-1.15, shift +-8 %, left-right flip, HU gain 0.9-1.1 and "
        "offset +-40, noise up to 30 HU",
    }


def _prepare_or_skip(record: SeriesRecord, spec: GridSpec) -> LungSample | str:
    torch.set_num_threads(1)
    try:
        return prepare_lung_sample(record, spec)
    except ValueError as exc:
        return str(exc)


def train_lungs_folder(
    data_dir: Path,
    labels_csv: Path | None,
    out_dir: Path,
    *,
    max_minutes: float = 10.0,
    workers: int = 1,
    seed: int = 0,
    val_fraction: float = 0.1,
    max_series: int | None = None,
    init: Path | None = None,
    work_xy_mm: float | None = None,
    dense_lung_weight: float | None = None,
) -> dict[str, Any]:
    """Train the lung network on the series of a data folder that have a known lung mask (a tenth of
    the patients validate) and write it to ``out_dir`` (model.inference.weights.save_lung_weights).
    ``max_series``: train on that many series drawn at random (memory: every series is held on the
    working grid). ``init``: a weights folder whose lung network training starts from.
    ``work_xy_mm``: the working grid's pixel (mm; the field of view stays 448 mm); default: the
    ``init`` network's grid, else the default grid. ``dense_lung_weight``: what dense lung near the
    border counts in the cross-entropy (:func:`pixel_weights`; default DENSE_WEIGHT). Returns the
    description written beside the weights."""
    if dense_lung_weight is None:
        dense_lung_weight = DENSE_WEIGHT
    if not math.isfinite(dense_lung_weight) or dense_lung_weight <= 0:
        raise ValueError(f"dense_lung_weight must be a number above 0, got {dense_lung_weight!r}")
    start_state = None
    spec = GridSpec()
    if init is not None:
        start_state, spec = lung_state(Path(init))
    if work_xy_mm is not None:
        spec = GridSpec.for_pixel(work_xy_mm, spec.z_mm)
    records = discover(data_dir, labels_csv)
    rng = np.random.default_rng(seed)
    if max_series is not None and len(records) > max_series:
        records = [records[int(i)] for i in sorted(rng.permutation(len(records))[:max_series])]
    patients = sorted({r.patient_id for r in records})
    val_patients = set(rng.permutation(patients)[: max(1, int(round(val_fraction * len(patients))))].tolist())
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        prepared = list(pool.map(_prepare_or_skip, records, [spec] * len(records)))
    skipped = [(r.series_id, p) for r, p in zip(records, prepared) if isinstance(p, str)]
    train = [p for r, p in zip(records, prepared) if not isinstance(p, str) and r.patient_id not in val_patients]
    val = [p for r, p in zip(records, prepared) if not isinstance(p, str) and r.patient_id in val_patients]
    if not train or not val:
        raise ValueError(
            f"{data_dir}: {len(train)} training and {len(val)} validation series with lung masks; need both"
        )
    log.info(
        "lungs: %d training, %d validation series prepared in %.0f s", len(train), len(val), time.monotonic() - started
    )
    result = train_lung_net(
        train,
        val,
        max_minutes=max_minutes,
        seed=seed,
        init=start_state,
        learning_rate=2e-3 if init is None else 5e-4,
        dense_lung_weight=dense_lung_weight,
    )
    description = lungnet.describe(spec) | {
        "training": describe_training(result, train, val, dense_lung_weight)
        | {"data": Path(data_dir).name, "skipped": skipped, "init": Path(init).name if init is not None else None},
    }
    save_lung_weights(result.state, out_dir, description)
    return description
