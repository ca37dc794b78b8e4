"""Probabilities that mean what they say: the series rule's calibration, fitted on validation
phantoms (never held-out ones) by ``dicom-node model evaluate --calibrate`` and kept in the
weights' inference metadata.

- temperature and class bias: series probabilities = softmax((series logits + bias) / T), both
  fitted by minimising the negative log-likelihood of the true classes (temperature scaling, Guo et
  al. 2017, with a bias per class: the top-k rule shifts the logits of every class, not only their
  scale); the last class's bias is fixed at 0;
- the indeterminate margin: the smallest margin between the two likeliest probabilities, at least
  MIN_MARGIN_FLOOR, that leaves the fewest wrong decisions;
- the region threshold: the joint-map threshold with the best lesion Dice.

The expected calibration error (ECE, 10 equal-width bins of the top probability) and its
reliability diagram say how well it worked (model.training.evaluate reports both).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize

from model.inference.series_rule import MIN_MARGIN_FLOOR, softmax
from model.inference.weights import read_metadata, update_metadata

ECE_BINS = 10
# A calibration set the rule decides all right gives the likelihood nothing to fit against: the
# temperature falls until every probability is near 1 (a fine-tuned classifier's fit reached the
# floor, 0.05, on 60 of 60 right). Said to whoever calibrates, not hidden.
ALL_RIGHT_WARNING = (
    "every calibration series is decided right, so the fit has no error to weigh: temperature {temperature:g}, "
    "probabilities near 1 that the set cannot support; calibrate on more series, or harder ones"
)


def fit_temperature_and_bias(
    logits: np.ndarray, labels: Sequence[int] | np.ndarray, l2: float = 1e-3
) -> tuple[float, tuple[float, ...], float]:
    """(temperature, class bias, negative log-likelihood per series) minimising the NLL of the
    true classes under softmax((logits + bias) / T), T in [0.05, 20]; a small L2 penalty keeps the
    bias finite when the classes separate perfectly."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(f"need (series, classes) logits and one label per series, got {z.shape} and {y.shape}")
    free = z.shape[1] - 1

    def nll(params: np.ndarray) -> float:
        t = np.exp(params[0])
        b = np.concatenate([params[1:], [0.0]])
        s = (z + b) / t
        s = s - s.max(axis=1, keepdims=True)
        logp = s[np.arange(len(y)), y] - np.log(np.exp(s).sum(axis=1))
        return float(-logp.mean() + l2 * np.sum(params[1:] ** 2))

    bounds = [(np.log(0.05), np.log(20.0))] + [(-10.0, 10.0)] * free
    best = minimize(nll, np.zeros(1 + free), method="L-BFGS-B", bounds=bounds)
    t = float(np.exp(best.x[0]))
    bias = tuple(round(float(v), 4) + 0.0 for v in best.x[1:]) + (0.0,)
    return round(t, 4), bias, float(best.fun)


def top_two_margin(probabilities: np.ndarray) -> np.ndarray:
    """Per series, the likeliest class's probability minus the second's."""
    top2 = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def fit_margin(
    probabilities: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    floor: float = MIN_MARGIN_FLOOR,
    cap: float = 0.5,
    step: float = 0.01,
) -> tuple[float, int]:
    """The indeterminate margin (model.inference.series_rule.decide): the smallest in
    [floor, cap] that leaves the fewest wrong decisions on these series; and that number."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    margin = top_two_margin(p)
    wrong = np.argmax(p, axis=1) != y
    best, fewest = floor, None
    for m in np.arange(floor, cap + step / 2, step):
        n = int(np.count_nonzero(wrong & (margin >= m)))
        if fewest is None or n < fewest:
            best, fewest = float(m), n
    return round(best, 4), int(fewest or 0)


def reliability(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """The expected calibration error of the top probability and the reliability diagram's bins
    (count, mean confidence, accuracy per equal-width bin)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if p.size == 0:
        return {"ece": None, "bins": []}
    conf = p.max(axis=1)
    right = np.argmax(p, axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    out, ece = [], 0.0
    for i in range(bins):
        sel = (conf > edges[i]) & (conf <= edges[i + 1]) if i else (conf >= 0.0) & (conf <= edges[1])
        if not sel.any():
            continue
        c, a = float(conf[sel].mean()), float(right[sel].mean())
        ece += sel.mean() * abs(c - a)
        out.append(
            {
                "low": float(edges[i]),
                "high": float(edges[i + 1]),
                "count": int(sel.sum()),
                "confidence": c,
                "accuracy": a,
            }
        )
    return {"ece": float(ece), "bins": out}


def calibrate(weights_dir: Any, report: dict[str, Any], command: str | None = None) -> dict[str, Any]:
    """From an evaluation on validation data (run with temperature 1, no class bias and no margin):
    the temperature, the class bias, the indeterminate margin and the region threshold, kept in the
    weights' inference metadata. Returns what was stored."""
    fit = report["series_logits"]
    logits, labels = np.array(fit["logits"]), fit["labels"]
    temperature, bias, nll = fit_temperature_and_bias(logits, labels)
    probs = softmax((logits + np.asarray(bias)) / temperature)
    margin, wrong = fit_margin(probs, labels)
    accuracy_after = float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))
    before = reliability(softmax(logits), labels)
    after = reliability(probs, labels)
    meta = read_metadata(weights_dir)
    inference = dict(meta.get("inference", {}))
    inference.update(temperature=temperature, class_bias=list(bias), min_margin=margin)
    chosen: dict[str, Any] = {
        "series": len(labels),
        "series_accuracy_before": report["headline"]["series_accuracy"],
        "series_accuracy_after": accuracy_after,
        "temperature": temperature,
        "class_bias": list(bias),
        "nll_after": round(nll, 4),
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "min_margin": margin,
        "wrong_decisions_left": wrong,
        "indeterminate": int(np.count_nonzero(top_two_margin(probs) < margin)),
        "data": report.get("data", {}).get("name"),
        "command": command,
    }
    if accuracy_after == 1.0:
        chosen["warning"] = ALL_RIGHT_WARNING.format(temperature=temperature)
    localisation = dict(inference.get("localisation", {}))
    # Regions grow down to grow_threshold from where the map passes the threshold: only thresholds
    # above it make valid settings (model.inference.localise.LocalisationSettings).
    floor = localisation.get("grow_threshold") or 0.0
    by_threshold = {
        t: dice for t, dice in report["localisation"].get("dice_mean_by_threshold", {}).items() if float(t) > floor
    }
    if by_threshold:
        best = max(by_threshold, key=lambda t: by_threshold[t])
        localisation["threshold"] = float(best)
        inference["localisation"] = localisation
        chosen["threshold"] = float(best)
        chosen["dice_at_threshold"] = by_threshold[best]
    inference["calibration"] = chosen
    update_metadata(weights_dir, {"inference": inference})
    return chosen
