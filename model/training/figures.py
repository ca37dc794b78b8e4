"""The pictures of an evaluation: ROC curves (series and slice level), the reliability diagram of the
series decisions, and overlays of example series (CT, the joint map, the lesion mask and the
reported regions). Not for clinical use."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from model.contract.result import SeriesResult
from model.inference.multiscale_cam import Predictor
from model.training import metrics
from model.training.calibration import reliability
from model.training.datasets import EvalSeries


def write_figures(
    out_dir: Path,
    classes: Sequence[str],
    series_true: list[int],
    series_probs: np.ndarray,
    slice_true: list[int],
    slice_probs: np.ndarray,
    overlay_items: list[Any],
    predictor: Predictor,
) -> list[str]:
    # lazy: pyplot only once the non-interactive backend is chosen (and only for the figures).
    import matplotlib  # noqa: PLC0415  # lazy: only for the figures, and pyplot needs the backend chosen first

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written: list[str] = []
    for level, y, probs in (("series", series_true, series_probs), ("slice", slice_true, slice_probs)):
        if len(y) == 0:
            continue
        fig, ax = plt.subplots(figsize=(5, 5))
        for c, name in enumerate(classes):
            truth = np.asarray(y) == c
            auc = metrics.roc_auc(truth, probs[:, c])
            if auc is None:
                continue
            fpr, tpr = metrics.roc_curve(truth, probs[:, c])
            ax.plot(fpr, tpr, label=f"{name} vs rest (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(
            f"{level}-level ROC, {predictor.model.info.name} {predictor.model.info.version}\nNot for clinical use",
            fontsize=9,
        )
        ax.legend(loc="lower right", fontsize=8)
        path = out_dir / f"roc_{level}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
    written.append(_reliability_figure(out_dir, series_true, series_probs, predictor, plt))
    for item, result, lesion, volume in overlay_items:
        path = out_dir / f"overlay_{_safe(item.series_id)}.png"
        _overlay(path, item, result, lesion, volume, plt)
        written.append(path.name)
    return written


def _reliability_figure(
    out_dir: Path, series_true: list[int], series_probs: np.ndarray, predictor: Predictor, plt: Any
) -> str:
    """The reliability diagram of the series decisions: accuracy against confidence per bin."""
    rel = reliability(series_probs, series_true)
    fig, ax = plt.subplots(figsize=(5, 5))
    for b in rel["bins"]:
        ax.bar((b["low"] + b["high"]) / 2, b["accuracy"], width=b["high"] - b["low"], edgecolor="black", alpha=0.6)
        ax.text((b["low"] + b["high"]) / 2, 0.02, str(b["count"]), ha="center", fontsize=7)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("confidence (top series probability)")
    ax.set_ylabel("accuracy")
    ece = rel["ece"]
    ax.set_title(
        f"reliability, {predictor.model.info.name} {predictor.model.info.version}: ECE "
        f"{ece:.3f}\n(bar labels: series per bin) Not for clinical use"
        if ece is not None
        else "reliability: no series",
        fontsize=9,
    )
    path = out_dir / "reliability_series.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def _overlay(
    path: Path, item: EvalSeries, result: SeriesResult, lesion: np.ndarray | None, volume: Any, plt: Any
) -> None:
    """The key slice (or the middle lung slice): CT in the lung window, the joint map, lesion outline."""
    if result.heatmap is None:
        return
    lung_idx = [i for i, v in enumerate(result.lung_slices) if v]
    if result.key_slices:
        z = result.key_slices[0]
    elif lesion is not None and lesion.any():
        z = int(np.argmax(lesion.reshape(lesion.shape[0], -1).sum(axis=1)))
    else:
        z = lung_idx[len(lung_idx) // 2]
    ct = np.clip((volume.hu[z] + 1350.0) / 1500.0, 0, 1)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(ct, cmap="gray", vmin=0, vmax=1)
    heat = np.ma.masked_less(result.heatmap[z], 0.05)
    ax.imshow(heat, cmap="magma", alpha=0.5, vmin=0, vmax=1)
    if lesion is not None and lesion[z].any():
        ax.contour(lesion[z], levels=[0.5], colors="cyan", linewidths=0.8)
    if result.region_labels is not None and result.region_labels[z].any():
        ax.contour(result.region_labels[z] > 0, levels=[0.5], colors="lime", linewidths=0.8)
    probs = ", ".join(f"{c} {p:.2f}" for c, p in result.probabilities.items())
    ax.set_title(
        f"{item.series_id} (truth {item.label}) slice {z}: {result.decision}\n{probs}\ncyan: lesion mask, "
        f"green: regions. Not for clinical use",
        fontsize=8,
    )
    ax.axis("off")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
