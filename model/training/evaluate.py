"""``dicom-node model evaluate``: the model on a labelled data set, slice and series level, and
its localisation against lesion masks where they exist (phantoms).

Every series goes through the full predict path (:class:`model.inference.multiscale_cam.Predictor`). Reported:

- slice level (every lung slice carries its series' label, as the authors count): accuracy,
  weighted precision/recall/F1, weighted sensitivity/specificity, per-class ROC AUC, confusion;
- series level, for both aggregation rules ("top_k", the default, and "mean" over all lung slices),
  the same metrics; the headline uses the predictor's rule;
- decisions as the product shows them: decision accuracy (indeterminate counts as not correct),
  how many were indeterminate, and the specificity of "any pneumonia" (normal series not decided
  covid or cap);
- localisation (series with a lesion mask): the pointing game (series peak and per lesion slice,
  10 mm in-plane tolerance), the Dice of the thresholded joint map (``>= threshold``, inside the
  lung mask) against the lesion mask, overall and per class, and the share of the joint map's
  mass inside the lesion mask dilated by 5 mm;
- lung involvement against the phantom's truth (its masks file): the error in percentage points
  on disease series, the largest involvement reported on a normal series;
- ROC curves (series and slice level) and example overlays as PNG files beside the JSON.

Phantom results prove the pipeline, nothing clinical.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from model.contract.notice import EVALUATION_NOTICE, NOT_FOR_CLINICAL_USE
from model.contract.result import SeriesResult
from model.inference.io import SeriesReadError
from model.inference.multiscale_cam import (
    AGGREGATION_RULES,
    MIN_MARGIN_FLOOR,
    Predictor,
    PredictorSettings,
    aggregate_series,
    softmax,
)
from model.inference.weights import load_weights, read_metadata, update_metadata
from model.training import metrics
from model.training.datasets import EvalSeries, discover, evaluation_items, load_volume, phantom_seeds

log = logging.getLogger(__name__)

POINTING_TOLERANCE_MM = 10.0
# The lesion mask is dilated by this much before the heatmap mass inside it is counted: a map that
# lies on the lesion's border is on the lesion.
MASS_DILATION_MM = 5.0
# Lung involvement counts as right within this many percentage points of the truth.
INVOLVEMENT_TOLERANCE_PP = 5.0
# Region thresholds whose Dice is reported too (to choose the threshold on validation data).
THRESHOLD_GRID: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
NOTICE = EVALUATION_NOTICE


def _per_series_localisation(
    result: SeriesResult, lesion: np.ndarray, spacing: Sequence[float], threshold: float
) -> dict[str, Any]:
    heat = result.heatmap
    assert heat is not None and result.lung_mask is not None
    if lesion.shape != heat.shape:
        raise ValueError(f"lesion mask {lesion.shape} and heatmap {heat.shape} differ in shape")
    pg = metrics.pointing_game(heat, lesion, spacing, POINTING_TOLERANCE_MM)
    predicted = (heat >= threshold) & result.lung_mask
    lesion_in_lung = lesion & result.lung_mask
    by_threshold = {f"{t:.1f}": metrics.dice((heat >= t) & result.lung_mask, lesion) for t in THRESHOLD_GRID}
    return {
        "heat_in_lesion": metrics.mass_inside(heat, metrics.dilate_mm(lesion, spacing, MASS_DILATION_MM)),
        "dice_by_threshold": by_threshold,
        "pointing_series_hit": pg["series_hit"],
        "pointing_slice_hits": pg["slice_hits"],
        "lesion_slices": pg["slices_with_lesion"],
        "dice": metrics.dice(predicted, lesion),
        "dice_lesion_in_lung": metrics.dice(predicted, lesion_in_lung),
        # The reported regions (what the SEG shows and the involvement counts); none unless covid or cap.
        "region_dice": metrics.dice(result.region_labels > 0, lesion) if result.region_labels is not None else 0.0,
        "lesion_ml": float(lesion.sum()) * float(np.prod(spacing)) / 1000.0,
        "lesion_in_lung_fraction": float(lesion_in_lung.sum()) / max(int(lesion.sum()), 1),
    }


def evaluate_series(
    predictor: Predictor,
    items: Sequence[EvalSeries],
    out_dir: Path | None = None,
    overlays: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the predictor over ``items`` and compute every metric (see the module docstring)."""
    classes = predictor.classes
    settings = predictor.settings
    threshold = settings.localisation.threshold
    slice_true: list[int] = []
    slice_probs: list[np.ndarray] = []
    series_true: list[int] = []
    series_probs: dict[str, list[np.ndarray]] = {rule: [] for rule in AGGREGATION_RULES}
    series_logits: list[np.ndarray] = []  # the settings' rule, before any class bias
    rows: list[dict[str, Any]] = []
    overlay_items: list[tuple[EvalSeries, SeriesResult, np.ndarray | None, Any]] = []
    timings: dict[str, list[float]] = {}
    iterator: Any = items
    if progress:
        iterator = tqdm(items, desc="evaluate", unit="series", dynamic_ncols=True)
    for item in iterator:
        if item.label not in classes:
            raise ValueError(
                f"series {item.series_id}: label {item.label!r} is not one of the model's classes {classes}"
            )
        y = classes.index(item.label)
        try:
            volume = load_volume(item.source)
        except SeriesReadError as exc:
            rows.append(
                {
                    "series": item.series_id,
                    "label": item.label,
                    "decision": "no_decision",
                    "reason": f"series could not be read: {exc}",
                    "no_decision": True,
                }
            )
            continue
        result, analysis = predictor.predict_with_analysis(volume)
        row: dict[str, Any] = {
            "series": item.series_id,
            "label": item.label,
            "decision": result.decision,
            "probabilities": {c: round(p, 6) for c, p in result.probabilities.items()},
            "reason": result.reason,
            "regions": len(result.regions),
            "lung_involvement_percent": result.lung_involvement_percent,
            "true_involvement_percent": item.true_involvement_percent,
        }
        for k, v in result.timings.items():
            timings.setdefault(k, []).append(v)
        if analysis is None:
            row["no_decision"] = True
            rows.append(row)
            continue
        series_true.append(y)
        for rule in AGGREGATION_RULES:
            # The class bias is chosen for the weights' rule: only that rule gets it.
            bias = settings.class_bias if rule == settings.aggregation else ()
            probs, used = aggregate_series(
                analysis.logits, classes, rule, settings.top_k_fraction, settings.top_k_min, bias
            )
            series_probs[rule].append(probs)
            if rule == settings.aggregation:
                series_logits.append(analysis.logits[used].mean(axis=0))
        p = softmax(analysis.logits)
        slice_probs.append(p)
        slice_true.extend([y] * len(p))
        lesion = None
        if item.lesion_mask is not None:
            lesion = np.asarray(item.lesion_mask(), dtype=bool)
            if lesion.any():
                row.update(_per_series_localisation(result, lesion, volume.spacing, threshold))
        rows.append(row)
        if (
            out_dir is not None
            and len(overlay_items) < overlays
            and (lesion is not None and lesion.any() or item.label != "normal")
        ):
            overlay_items.append((item, result, lesion, volume))
        elif (
            out_dir is not None
            and len(overlay_items) < overlays
            and item.label == "normal"
            and not any(o[0].label == "normal" for o in overlay_items)
        ):
            overlay_items.append((item, result, lesion, volume))

    report: dict[str, Any] = {"notice": NOTICE, "model": predictor.model.info.to_json(), "classes": list(classes)}
    report["settings"] = _settings_json(settings)
    report["series_count"] = len(items)
    report["no_decision_count"] = sum(1 for r in rows if r.get("no_decision"))
    sp = np.concatenate(slice_probs) if slice_probs else np.zeros((0, len(classes)))
    report["slice_level"] = metrics.classification_report(slice_true, sp, classes)
    report["series_level"] = {
        rule: metrics.classification_report(
            series_true, np.array(series_probs[rule]).reshape(-1, len(classes)), classes
        )
        for rule in AGGREGATION_RULES
    }
    loc_rows = [r for r in rows if "dice" in r]
    report["localisation"] = _localisation_summary(loc_rows, threshold)
    report["timings_mean_s"] = {k: float(np.mean(v)) for k, v in timings.items()}
    report["decisions"] = _decision_summary(rows)
    main = report["series_level"][settings.aggregation]
    report["headline"] = {
        "series_accuracy": main["accuracy"],
        "covid_vs_rest_auc": main["per_class"].get("covid", {}).get("roc_auc"),
        "cap_vs_rest_auc": main["per_class"].get("cap", {}).get("roc_auc"),
        "normal_vs_rest_auc": main["per_class"].get("normal", {}).get("roc_auc"),
        "decision_accuracy": report["decisions"]["decision_accuracy"],
        "indeterminate": report["decisions"]["indeterminate"],
        "pneumonia_specificity": report["decisions"]["pneumonia_specificity"],
        "pointing_game": report["localisation"].get("pointing_game_series"),
        "lesion_dice": report["localisation"].get("dice_mean"),
        "region_dice": report["localisation"].get("region_dice_mean"),
        "heat_in_lesion": report["localisation"].get("heat_in_lesion_mean"),
        "involvement_within_5pp": report["decisions"]["involvement_within_5pp"],
        "max_normal_involvement_percent": report["decisions"]["max_normal_involvement_percent"],
        "slice_accuracy": report["slice_level"]["accuracy"],
        "aggregation": settings.aggregation,
        "series": len(items),
        "notice": NOT_FOR_CLINICAL_USE,
    }
    report["series"] = rows
    report["series_logits"] = {
        "labels": series_true,
        "logits": [[round(float(v), 6) for v in z] for z in series_logits],
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report["figures"] = _figures(
            out_dir,
            classes,
            series_true,
            np.array(series_probs[settings.aggregation]).reshape(-1, len(classes)),
            slice_true,
            sp,
            overlay_items,
            predictor,
        )
    return report


def _settings_json(settings: PredictorSettings) -> dict[str, Any]:
    return asdict(settings)


def _decision_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the product says, series by series: decisions (indeterminate is not a correct one),
    normal series called pneumonia, lung involvement against the truth."""
    decided = [r for r in rows if not r.get("no_decision")]
    normals = [r for r in decided if r["label"] == "normal"]
    disease = [r for r in decided if r["label"] != "normal" and r.get("true_involvement_percent") is not None]
    errors = [abs(float(r["lung_involvement_percent"] or 0.0) - float(r["true_involvement_percent"])) for r in disease]
    return {
        "series": len(decided),
        "decision_accuracy": float(np.mean([r["decision"] == r["label"] for r in decided])) if decided else None,
        "indeterminate": sum(1 for r in decided if r["decision"] == "indeterminate"),
        "pneumonia_specificity": float(np.mean([r["decision"] not in ("covid", "cap") for r in normals]))
        if normals
        else None,
        "involvement_error_pp_mean": float(np.mean(errors)) if errors else None,
        "involvement_within_5pp": float(np.mean([e <= INVOLVEMENT_TOLERANCE_PP for e in errors])) if errors else None,
        "max_normal_involvement_percent": max(
            (float(r["lung_involvement_percent"] or 0.0) for r in normals), default=None
        ),
    }


def _localisation_summary(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    if not rows:
        return {"series_with_lesions": 0}
    out: dict[str, Any] = {
        "series_with_lesions": len(rows),
        "threshold": threshold,
        "tolerance_mm": POINTING_TOLERANCE_MM,
        "pointing_game_series": float(np.mean([r["pointing_series_hit"] for r in rows])),
        "pointing_game_slices": float(
            sum(r["pointing_slice_hits"] for r in rows) / max(sum(r["lesion_slices"] for r in rows), 1)
        ),
        "dice_mean": float(np.mean([r["dice"] for r in rows])),
        "dice_median": float(np.median([r["dice"] for r in rows])),
        "region_dice_mean": float(np.mean([r["region_dice"] for r in rows])),
        "heat_in_lesion_mean": float(np.mean([r["heat_in_lesion"] for r in rows])),
        "heat_in_lesion_dilation_mm": MASS_DILATION_MM,
        "dice_lesion_in_lung_mean": float(np.mean([r["dice_lesion_in_lung"] for r in rows])),
        "lesion_in_lung_fraction_mean": float(np.mean([r["lesion_in_lung_fraction"] for r in rows])),
        "dice_mean_by_threshold": {
            t: float(np.mean([r["dice_by_threshold"][t] for r in rows])) for t in rows[0]["dice_by_threshold"]
        },
        "per_class": {},
    }
    for label in sorted({r["label"] for r in rows}):
        sub = [r for r in rows if r["label"] == label]
        out["per_class"][label] = {
            "series": len(sub),
            "pointing_game_series": float(np.mean([r["pointing_series_hit"] for r in sub])),
            "dice_mean": float(np.mean([r["dice"] for r in sub])),
            "heat_in_lesion_mean": float(np.mean([r["heat_in_lesion"] for r in sub])),
        }
    return out


def _figures(
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
    for item, result, lesion, volume in overlay_items:
        path = out_dir / f"overlay_{_safe(item.series_id)}.png"
        _overlay(path, item, result, lesion, volume, plt)
        written.append(path.name)
    return written


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
        f"{item.series_id} (truth {item.label}) slice {z}: {result.decision}\n{probs}\ncyan: lesion mask, green: regions. Not for clinical use",
        fontsize=8,
    )
    ax.axis("off")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def evaluate_folder(
    data_dir: Path,
    labels_csv: Path | None,
    weights_dir: Path | None,
    json_out: Path,
    settings: PredictorSettings | None = None,
    overlays: int = 6,
    progress: bool = False,
    record: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Evaluate on a data folder + labels CSV; write the JSON and the PNGs beside it. ``record``:
    also store the summary under that key of the weights' metadata (e.g. ``held_out_metrics``);
    that needs ``weights_dir`` named, so that the shipped weights are never rewritten by default."""
    record_into = None
    if record is not None:
        if weights_dir is None:
            raise ValueError("recording metrics writes into a weights folder's metadata: name the folder")
        record_into = Path(weights_dir)
    started = time.perf_counter()
    predictor = Predictor(load_weights(weights_dir, (settings or PredictorSettings()).device), settings)
    items = evaluation_items(Path(data_dir), Path(labels_csv) if labels_csv is not None else None)
    json_out = Path(json_out)
    report = evaluate_series(predictor, items, json_out.parent, overlays, progress)
    report["data"] = {
        "folder": str(data_dir),
        "labels": str(labels_csv) if labels_csv is not None else None,
        "phantom_seeds": phantom_seeds(discover(Path(data_dir), labels_csv)),
    }
    report["seconds"] = time.perf_counter() - started
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    if record is not None and record_into is not None:
        record_metrics(record_into, record, report, command)
    return report


def fit_class_bias(
    logits: np.ndarray, labels: Sequence[int], step: float = 0.05, limit: float = 4.0
) -> tuple[tuple[float, ...], float]:
    """The class bias (added to series logits; the last class's fixed at 0) that maximises the
    series accuracy on these series (the middle of the region of such biases); and that accuracy.

    A grid search (the bias has one or two free values): validation data, never held-out data.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(f"need (series, classes) logits and one label per series, got {z.shape} and {y.shape}")
    grid = np.arange(-limit, limit + step / 2, step)
    free = z.shape[1] - 1
    axes = np.meshgrid(*([grid] * free), indexing="ij")
    candidates = np.stack([a.ravel() for a in axes] + [np.zeros(axes[0].size)], axis=1)  # (m, classes)
    accuracy = np.array([np.mean(np.argmax(z + b, axis=1) == y) for b in candidates])
    best = np.flatnonzero(accuracy == accuracy.max())
    # The middle of the best region (away from its edges, where one series flips), if it is in
    # the region; else the smallest best bias.
    middle = candidates[best].mean(axis=0)
    if np.mean(np.argmax(z + middle, axis=1) == y) == accuracy.max():
        chosen = middle
    else:
        chosen = candidates[best[np.argmin(np.abs(candidates[best]).sum(axis=1))]]
    return tuple(round(float(v), 4) + 0.0 for v in chosen), float(accuracy.max())


def top_two_margin(probabilities: np.ndarray) -> np.ndarray:
    """Per series, the likeliest class's probability minus the second's."""
    top2 = np.sort(np.asarray(probabilities, dtype=np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def fit_margin(
    probabilities: np.ndarray,
    labels: Sequence[int],
    floor: float = MIN_MARGIN_FLOOR,
    cap: float = 0.5,
    step: float = 0.01,
) -> tuple[float, int]:
    """The indeterminate margin (model.inference.multiscale_cam.decide): the smallest in
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


def calibrate(weights_dir: Path, report: dict[str, Any], command: str | None = None) -> dict[str, Any]:
    """From an evaluation on validation data (run without class bias and margin): the class bias,
    the indeterminate margin and the region threshold, kept in the weights' inference metadata.
    Returns what was stored."""
    fit = report["series_logits"]
    logits, labels = np.array(fit["logits"]), fit["labels"]
    bias, accuracy = fit_class_bias(logits, labels)
    probs = softmax(logits + np.asarray(bias))
    margin, wrong = fit_margin(probs, labels)
    meta = read_metadata(weights_dir)
    inference = dict(meta.get("inference", {}))
    inference["class_bias"] = list(bias)
    inference["min_margin"] = margin
    by_threshold = report["localisation"].get("dice_mean_by_threshold", {})
    chosen: dict[str, Any] = {
        "series": len(labels),
        "series_accuracy_before": report["headline"]["series_accuracy"],
        "series_accuracy_after": accuracy,
        "class_bias": list(bias),
        "min_margin": margin,
        "wrong_decisions_left": wrong,
        "indeterminate": int(np.count_nonzero(top_two_margin(probs) < margin)),
        "data": report.get("data", {}).get("folder"),
        "command": command,
    }
    if by_threshold:
        best = max(by_threshold, key=lambda t: by_threshold[t])
        localisation = dict(inference.get("localisation", {}))
        localisation["threshold"] = float(best)
        inference["localisation"] = localisation
        chosen["threshold"] = float(best)
        chosen["dice_at_threshold"] = by_threshold[best]
    inference["calibration"] = chosen
    inference.pop("class_bias_fit", None)
    update_metadata(weights_dir, {"inference": inference})
    return chosen


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The part of an evaluation report that goes into weights metadata."""
    main_rule = report["settings"]["aggregation"]
    out: dict[str, Any] = {
        "headline": report["headline"],
        "series_count": report["series_count"],
        "no_decision_count": report["no_decision_count"],
        "per_class_series": {c: v["support"] for c, v in report["series_level"][main_rule]["per_class"].items()},
        "series_level": {},
        "slice_level": {
            k: report["slice_level"][k]
            for k in ("accuracy", "weighted_f1", "weighted_sensitivity", "weighted_specificity")
        },
        "localisation": {k: v for k, v in report["localisation"].items() if k != "per_class"}
        | {"per_class": report["localisation"].get("per_class", {})},
        "settings": report["settings"],
        "data": report.get("data", {}),
        "phantom_seeds": report.get("data", {}).get("phantom_seeds", []),
        "notice": NOTICE,
    }
    out["slice_level"]["roc_auc"] = {c: v["roc_auc"] for c, v in report["slice_level"]["per_class"].items()}
    for rule, rep in report["series_level"].items():
        out["series_level"][rule] = {
            "accuracy": rep["accuracy"],
            "weighted_f1": rep["weighted_f1"],
            "weighted_sensitivity": rep["weighted_sensitivity"],
            "weighted_specificity": rep["weighted_specificity"],
            "roc_auc": {c: v["roc_auc"] for c, v in rep["per_class"].items()},
            "confusion_matrix": rep["confusion_matrix"]["counts"],
        }
    return out


def record_metrics(weights_dir: Path, key: str, report: dict[str, Any], command: str | None = None) -> None:
    """Store :func:`summarise` of ``report`` under ``key`` in the weights' metadata (for example
    ``held_out_metrics``), with the command that produced it."""
    summary = summarise(report)
    if command:
        summary["command"] = command
    if key == "held_out_metrics":
        training = read_metadata(weights_dir).get("training_data", {}).get("phantom_seeds", [])
        overlap = sorted(set(training) & set(summary["phantom_seeds"]))
        if overlap:
            raise ValueError(f"held-out phantom seeds {overlap} were used in training")
    update_metadata(weights_dir, {key: json.loads(json.dumps(summary, default=_json_default))})


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
