"""Classification and localisation metrics, as the method's authors report them; ROC AUC and Dice
are MONAI's (``monai.metrics``), with the conventions below.

Slice and series level: accuracy, weighted precision / recall / F1, weighted sensitivity /
specificity (one-vs-rest per class, weighted by support), per-class ROC AUC (one-vs-rest,
Mann-Whitney with ties counted half), the confusion matrix (counts and row-normalised).
Localisation: the pointing game (is the map's peak inside the lesion, with a tolerance) and Dice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_roc_auc
from scipy import ndimage


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """Counts, rows = truth, columns = prediction."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[int(t), int(p)] += 1
    return cm


def roc_auc(y_true_binary: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve (probability a positive outscores a negative; ties half).

    None when one of the two groups is empty.
    """
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        return None
    return float(np.asarray(compute_roc_auc(torch.from_numpy(s), torch.from_numpy(y.astype(np.int64)))))


def roc_curve(
    y_true_binary: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    idx = np.concatenate([distinct, [y.size - 1]]) if y.size else np.array([], dtype=int)
    tps = np.cumsum(y)[idx] if y.size else np.array([])
    fps = (idx + 1 - tps) if y.size else np.array([])
    p, n = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.concatenate([[0.0], fps / n]), np.concatenate([[0.0], tps / p])


def classification_report(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """All classification metrics for predictions ``argmax(probs)`` against ``y_true``."""
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    pred = probs.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(y, pred, k)
    support = cm.sum(axis=1)
    total = int(support.sum())
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        tp = cm[c, c]
        fp = cm[:, c].sum() - tp
        fn = cm[c, :].sum() - tp
        tn = total - tp - fp - fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        specificity = tn / (tn + fp) if tn + fp else 0.0
        per_class[name] = {
            "support": int(support[c]),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "sensitivity": float(recall),
            "specificity": float(specificity),
            "roc_auc": roc_auc(y == c, probs[:, c]) if len(y) else None,
        }
    weights = support / max(total, 1)

    def weighted(key: str) -> float:
        return float(sum(w * per_class[n][key] for w, n in zip(weights, classes)))

    rows = cm.sum(axis=1, keepdims=True)
    return {
        "n": total,
        "accuracy": float(np.trace(cm) / total) if total else None,
        "weighted_precision": weighted("precision"),
        "weighted_recall": weighted("recall"),
        "weighted_f1": weighted("f1"),
        "weighted_sensitivity": weighted("sensitivity"),
        "weighted_specificity": weighted("specificity"),
        "per_class": per_class,
        "confusion_matrix": {
            "classes": list(classes),
            "rows": "truth",
            "columns": "prediction",
            "counts": cm.tolist(),
            "row_normalised": np.divide(cm, np.maximum(rows, 1)).round(4).tolist(),
        },
    }


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=bool))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(truth, dtype=bool))[None, None]
    return float(compute_dice(p, t, ignore_empty=False)[0, 0])


def _within(point: tuple[int, ...], mask: np.ndarray, tolerance_px: tuple[float, float]) -> bool:
    """Is ``point`` (y, x) of a 2D mask within ``tolerance_px`` (ty, tx) of a mask pixel?"""
    y, x = point
    ty, tx = tolerance_px
    if ty <= 0 or tx <= 0:
        return bool(mask[y, x])
    ry, rx = int(np.ceil(ty)), int(np.ceil(tx))
    window = mask[max(0, y - ry) : y + ry + 1, max(0, x - rx) : x + rx + 1]
    if not window.any():
        return False
    yy, xx = np.nonzero(window)
    dy = (yy + max(0, y - ry) - y) / ty
    dx = (xx + max(0, x - rx) - x) / tx
    return bool(np.any(dy * dy + dx * dx <= 1.0))


def pointing_game(
    heatmap: np.ndarray, lesion: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 10.0
) -> dict[str, Any]:
    """Series and slice pointing game (Zhang et al. 2016, with the tolerance in mm in-plane).

    Series: the 3D peak of the map lies on a lesion slice within ``tolerance_mm`` of the lesion.
    Slices: on every slice with lesion, the slice's peak (if the map is not all zero there) does.
    """
    dz, dy, dx = (float(s) for s in spacing)
    tol = (tolerance_mm / dy, tolerance_mm / dx)
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    series_hit = bool(heatmap[peak] > 0) and _within((int(peak[1]), int(peak[2])), lesion[int(peak[0])], tol)
    hits = total = 0
    for z in np.nonzero(lesion.reshape(lesion.shape[0], -1).any(axis=1))[0]:
        total += 1
        sl = heatmap[z]
        if sl.max() <= 0:
            continue
        yx = np.unravel_index(int(np.argmax(sl)), sl.shape)
        hits += int(_within((int(yx[0]), int(yx[1])), lesion[z], tol))
    return {"series_hit": series_hit, "slice_hits": hits, "slices_with_lesion": total}


def dilate_mm(mask: np.ndarray, spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """In-plane dilation of a 3D mask (slices, rows, columns) by a disc of ``radius_mm``."""
    dy, dx = float(spacing[1]), float(spacing[2])
    ry, rx = int(np.ceil(radius_mm / dy)), int(np.ceil(radius_mm / dx))
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    disc = ((yy * dy) ** 2 + (xx * dx) ** 2) <= radius_mm**2
    return np.asarray(ndimage.binary_dilation(mask, structure=disc[None]), dtype=bool)


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of a non-negative map's total inside ``mask`` (0 for an all-zero map)."""
    total = float(heatmap.sum(dtype=np.float64))
    return 0.0 if total <= 0 else float(heatmap[mask].sum(dtype=np.float64)) / total
