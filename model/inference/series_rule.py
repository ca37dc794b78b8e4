"""The series rule of the multi-scale CAM model, and the settings it reads: slice logits -> series
probabilities (the top-k rule or the mean, a class bias and a temperature from calibration) ->
the decision (the likeliest class, or "indeterminate" below the margin). Documented in
model/README.md; the settings' defaults here are the one place inference defaults are written
(new weights' metadata is made from them: model.training.folder.inference_defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from model.contract.result import ABNORMAL_CLASSES, CLASSES
from model.inference.localise import LocalisationSettings
from model.inference.options import InferenceOptions

AGGREGATION_RULES: tuple[str, ...] = ("top_k", "mean")
# The least min_margin calibration may choose (model.training.evaluate.fit_margin): a series whose two
# likeliest classes are within 0.1 of each other is never decided.
MIN_MARGIN_FLOOR = 0.1
CLASS_WORDS = {
    "covid": "COVID-19 pattern",
    "cap": "community-acquired pneumonia pattern",
    "normal": "no pneumonia pattern",
}


@dataclass(frozen=True)
class PredictorSettings:
    """Inference settings. ``device`` "cpu" or "cuda" (or "cuda:N")."""

    device: str = InferenceOptions.device
    batch_size: int = InferenceOptions.batch_size
    aggregation: str = "top_k"
    top_k_fraction: float = 0.1
    top_k_min: int = 3
    min_lung_slices: int = 5
    min_lung_volume_ml: float = 100.0
    key_slices: int = 5
    # Added to the series logits before the softmax, one per class (empty: none). Chosen on
    # validation data by `dicom-node model evaluate --calibrate` and kept in the weights'
    # inference metadata: a calibration of the series rule, not of the network.
    class_bias: tuple[float, ...] = ()
    # Divides the (biased) series logits before the softmax: probabilities that match how often the
    # decisions are right. Fitted with the bias (model.training.calibration).
    temperature: float = 1.0
    # The least difference between the two likeliest series probabilities for a decision; below it
    # the decision is "indeterminate" (the reason names both). Chosen on validation data by
    # `dicom-node model evaluate --calibrate` (never below MIN_MARGIN_FLOOR) and kept in the weights'
    # inference metadata. 0: always decide.
    min_margin: float = 0.0
    localisation: LocalisationSettings = field(default_factory=LocalisationSettings)

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATION_RULES:
            raise ValueError(f"aggregation must be one of {AGGREGATION_RULES}, got {self.aggregation!r}")
        if not 0.0 < self.top_k_fraction <= 1.0 or self.top_k_min < 1:
            raise ValueError("top_k_fraction must be in (0, 1] and top_k_min >= 1")
        if self.batch_size < 1 or self.min_lung_slices < 1 or self.key_slices < 0:
            raise ValueError("batch_size and min_lung_slices must be >= 1, key_slices >= 0")
        if not 0.0 <= self.min_margin < 1.0:
            raise ValueError(f"min_margin must be in [0, 1), got {self.min_margin!r}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")


def abnormality(logits: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Per slice: 1 - p(normal), or the top probability for a model without a normal class."""
    probs = softmax(logits)
    if "normal" in classes:
        return 1.0 - probs[:, list(classes).index("normal")]
    return probs.max(axis=1)


def aggregate_series(
    logits: np.ndarray,
    classes: Sequence[str],
    settings: PredictorSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Series probabilities from slice logits (n, classes), and the slice indices used.

    See the module docstring for the rule (``settings.aggregation``, ``top_k_fraction``, ``top_k_min``;
    default: PredictorSettings()); ``settings.class_bias`` (one per class, or none) is added to the series
    logits and the sum divided by ``settings.temperature`` before the softmax. Returns (probabilities
    (classes,), indices used, most abnormal first for "top_k").
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"need (n >= 1, classes) slice logits, got shape {logits.shape}")
    settings = settings or PredictorSettings()
    n = logits.shape[0]
    if settings.aggregation == "mean":
        used = np.arange(n)
    else:  # top_k (PredictorSettings admits no other rule)
        k = min(n, max(settings.top_k_min, math.ceil(settings.top_k_fraction * n)))
        used = np.argsort(-abnormality(logits, classes), kind="stable")[:k]
    series_logits = logits[used].mean(axis=0)
    bias = settings.class_bias
    if len(bias):
        if len(bias) != logits.shape[1]:
            raise ValueError(f"class_bias needs one value per class ({logits.shape[1]}), got {len(bias)}")
        series_logits = series_logits + np.asarray(bias, dtype=series_logits.dtype)
    return softmax(series_logits[None, :] / settings.temperature)[0], used


def decide(
    probs: np.ndarray | Sequence[float], classes: Sequence[str], min_margin: float = 0.0
) -> tuple[str, str | None]:
    """The series decision: the likeliest class, or "indeterminate" when it leads the second by
    less than ``min_margin``; then also the reason, naming both."""
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    first = classes[int(order[0])]
    if len(order) < 2 or min_margin <= 0.0:
        return first, None
    second = classes[int(order[1])]
    margin = float(p[order[0]] - p[order[1]])
    if margin >= min_margin:
        return first, None
    return "indeterminate", (
        f"low confidence: p({first})={p[order[0]]:.3f} against p({second})={p[order[1]]:.3f}, "
        f"a margin of {margin:.3f} below the {min_margin:.3f} chosen on validation data"
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (numerically stable)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def full_probabilities(probs: np.ndarray | Sequence[float], classes: Sequence[str]) -> dict[str, float]:
    """The model's probabilities keyed by all of CLASSES (0 for a class the model lacks)."""
    out = {c: 0.0 for c in CLASSES}
    for c, p in zip(classes, probs):
        out[c] = float(p)
    return out


def localisation_target(probs: np.ndarray, classes: Sequence[str]) -> int:
    """The class the heatmap shows: the likelier abnormal class (whatever the decision: a normal or
    indeterminate series' map shows where the evidence for disease is); the top class for a model
    without abnormal classes."""
    abnormal = [c for c in classes if c in ABNORMAL_CLASSES]
    if not abnormal:
        return int(np.argmax(probs))
    return list(classes).index(max(abnormal, key=lambda c: probs[list(classes).index(c)]))
