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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from model.contract.notice import EVALUATION_NOTICE, NOT_FOR_CLINICAL_USE
from model.contract.result import ABNORMAL_CLASSES, SeriesResult
from model.inference.io import SeriesReadError
from model.inference.multiscale_cam import Predictor
from model.inference.series_rule import AGGREGATION_RULES, PredictorSettings, aggregate_series, softmax
from model.inference.weights import load_weights, read_metadata, update_metadata
from model.training import metrics, truth
from model.training.calibration import reliability
from model.training.datasets import EvalSeries, discover, evaluation_items, load_volume, phantom_seeds
from model.training.figures import write_figures

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


@dataclass
class _Collected:
    """What the series of an evaluation add up to."""

    classes: tuple[str, ...]
    slice_true: list[int] = field(default_factory=list)
    slice_probs: list[np.ndarray] = field(default_factory=list)
    series_true: list[int] = field(default_factory=list)
    series_probs: dict[str, list[np.ndarray]] = field(default_factory=lambda: {r: [] for r in AGGREGATION_RULES})
    series_logits: list[np.ndarray] = field(default_factory=list)  # the settings' rule, before any calibration
    rows: list[dict[str, Any]] = field(default_factory=list)
    overlays: list[tuple[EvalSeries, SeriesResult, np.ndarray | None, Any]] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)

    def probs(self, rule: str) -> np.ndarray:
        return np.array(self.series_probs[rule]).reshape(-1, len(self.classes))


def evaluate_series(
    predictor: Predictor,
    items: Sequence[EvalSeries],
    out_dir: Path | None = None,
    overlays: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the predictor over ``items`` and compute every metric (see the module docstring)."""
    got = _Collected(tuple(predictor.classes))
    iterator: Any = tqdm(items, desc="evaluate", unit="series", dynamic_ncols=True) if progress else items
    for item in iterator:
        if item.label not in got.classes:
            raise ValueError(
                f"series {item.series_id}: label {item.label!r} is not one of the model's classes {got.classes}"
            )
        _evaluate_one(predictor, item, got, overlays if out_dir is not None else 0)
    report = _report(predictor, got, len(items))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report["figures"] = write_figures(
            out_dir,
            got.classes,
            got.series_true,
            got.probs(predictor.settings.aggregation),
            got.slice_true,
            np.concatenate(got.slice_probs) if got.slice_probs else np.zeros((0, len(got.classes))),
            got.overlays,
            predictor,
        )
    return report


def _evaluate_one(predictor: Predictor, item: EvalSeries, got: _Collected, overlays: int) -> None:
    """Predict one series and add its row, its probabilities and its truth metrics to ``got``."""
    settings = predictor.settings
    try:
        volume = load_volume(item.source)
    except SeriesReadError as exc:
        got.rows.append(
            {
                "series": item.series_id,
                "label": item.label,
                "decision": "no_decision",
                "reason": f"series could not be read: {exc}",
                "no_decision": True,
            }
        )
        return
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
        got.timings.setdefault(k, []).append(v)
    if analysis is None:
        row["no_decision"] = True
        got.rows.append(row)
        return
    y = got.classes.index(item.label)
    got.series_true.append(y)
    for rule in AGGREGATION_RULES:
        # The calibration (bias, temperature) is the weights' rule's: only that rule gets it.
        as_rule = (
            settings
            if rule == settings.aggregation
            else replace(settings, aggregation=rule, class_bias=(), temperature=1.0)
        )
        probs, used = aggregate_series(analysis.logits, got.classes, as_rule)
        got.series_probs[rule].append(probs)
        if rule == settings.aggregation:
            got.series_logits.append(analysis.logits[used].mean(axis=0))
    p = softmax(analysis.logits)
    got.slice_probs.append(p)
    got.slice_true.extend([y] * len(p))
    lesion = np.asarray(item.lesion_mask(), dtype=bool) if item.lesion_mask is not None else None
    if lesion is not None and lesion.any():
        row.update(_per_series_localisation(result, lesion, volume.spacing, settings.localisation.threshold))
    if item.lung_mask is not None and result.lung_mask is not None:
        true_lungs = np.asarray(item.lung_mask(), dtype=bool)
        row.update(truth.lung_mask_metrics(result.lung_mask, true_lungs, lesion, volume.hu, volume.spacing))
        row["region_voxels_outside_lungs"] = truth.regions_outside_lungs(
            result.region_labels, true_lungs, volume.spacing
        )
    row["categories"] = truth.categories(item.meta)
    got.rows.append(row)
    # Overlays: series with lesions (or labelled disease) first, and one normal series.
    wanted = (lesion is not None and lesion.any()) or item.label != "normal"
    first_normal = item.label == "normal" and not any(o[0].label == "normal" for o in got.overlays)
    if len(got.overlays) < overlays and (wanted or first_normal):
        got.overlays.append((item, result, lesion, volume))


def _report(predictor: Predictor, got: _Collected, count: int) -> dict[str, Any]:
    settings, classes, rows = predictor.settings, got.classes, got.rows
    report: dict[str, Any] = {"notice": NOTICE, "model": predictor.model.info.to_json(), "classes": list(classes)}
    report["settings"] = _settings_json(settings)
    report["series_count"] = count
    report["no_decision_count"] = sum(1 for r in rows if r.get("no_decision"))
    sp = np.concatenate(got.slice_probs) if got.slice_probs else np.zeros((0, len(classes)))
    report["slice_level"] = metrics.classification_report(got.slice_true, sp, classes)
    report["series_level"] = {
        rule: metrics.classification_report(got.series_true, got.probs(rule), classes) for rule in AGGREGATION_RULES
    }
    report["localisation"] = _localisation_summary([r for r in rows if "dice" in r], settings.localisation.threshold)
    report["timings_mean_s"] = {k: float(np.mean(v)) for k, v in got.timings.items()}
    report["decisions"] = _decision_summary(rows)
    report["lungs"] = lung_summary(rows)
    report["by_category"] = truth.category_table(rows)
    report["calibration"] = reliability(got.probs(settings.aggregation), got.series_true)
    report["headline"] = _headline(report, settings, count)
    report["series"] = rows
    report["series_logits"] = {
        "labels": got.series_true,
        "logits": [[round(float(v), 6) for v in z] for z in got.series_logits],
    }
    return report


def _headline(report: dict[str, Any], settings: PredictorSettings, count: int) -> dict[str, Any]:
    main = report["series_level"][settings.aggregation]
    decisions, lungs, loc = report["decisions"], report["lungs"], report["localisation"]
    return {
        "series_accuracy": main["accuracy"],
        "covid_vs_rest_auc": main["per_class"].get("covid", {}).get("roc_auc"),
        "cap_vs_rest_auc": main["per_class"].get("cap", {}).get("roc_auc"),
        "normal_vs_rest_auc": main["per_class"].get("normal", {}).get("roc_auc"),
        "decision_accuracy": decisions["decision_accuracy"],
        "indeterminate": decisions["indeterminate"],
        "pneumonia_sensitivity": decisions["pneumonia_sensitivity"],
        "pneumonia_specificity": decisions["pneumonia_specificity"],
        "covid_vs_cap_accuracy": decisions["covid_vs_cap_accuracy"],
        "ece": report["calibration"]["ece"],
        "lung_dice_mean": lungs.get("lung_dice_mean"),
        "lesion_in_lung_mask": lungs.get("lesion_in_mask_mean"),
        "region_voxels_outside_lungs": lungs.get("region_voxels_outside_lungs"),
        "pointing_game": loc.get("pointing_game_series"),
        "lesion_dice": loc.get("dice_mean"),
        "region_dice": loc.get("region_dice_mean"),
        "heat_in_lesion": loc.get("heat_in_lesion_mean"),
        "involvement_within_5pp": decisions["involvement_within_5pp"],
        "max_normal_involvement_percent": decisions["max_normal_involvement_percent"],
        "slice_accuracy": report["slice_level"]["accuracy"],
        "aggregation": settings.aggregation,
        "series": count,
        "notice": NOT_FOR_CLINICAL_USE,
    }


def _settings_json(settings: PredictorSettings) -> dict[str, Any]:
    return asdict(settings)


def _decision_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the product says, series by series: decisions (indeterminate is not a correct one),
    normal series called pneumonia, lung involvement against the truth."""
    decided = [r for r in rows if not r.get("no_decision")]
    normals = [r for r in decided if r["label"] == "normal"]
    sick = [r for r in decided if r["label"] in ABNORMAL_CLASSES]
    called = [r for r in sick if r["decision"] in ABNORMAL_CLASSES]
    disease = [r for r in decided if r["label"] != "normal" and r.get("true_involvement_percent") is not None]
    errors = [abs(float(r["lung_involvement_percent"] or 0.0) - float(r["true_involvement_percent"])) for r in disease]
    return {
        "series": len(decided),
        "decision_accuracy": float(np.mean([r["decision"] == r["label"] for r in decided])) if decided else None,
        "indeterminate": sum(1 for r in decided if r["decision"] == "indeterminate"),
        "pneumonia_specificity": float(np.mean([r["decision"] not in ABNORMAL_CLASSES for r in normals]))
        if normals
        else None,
        "pneumonia_sensitivity": float(np.mean([r["decision"] in ABNORMAL_CLASSES for r in sick])) if sick else None,
        "covid_vs_cap_accuracy": float(np.mean([r["decision"] == r["label"] for r in called])) if called else None,
        "involvement_error_pp_mean": float(np.mean(errors)) if errors else None,
        "involvement_within_5pp": float(np.mean([e <= INVOLVEMENT_TOLERANCE_PP for e in errors])) if errors else None,
        "max_normal_involvement_percent": max(
            (float(r["lung_involvement_percent"] or 0.0) for r in normals), default=None
        ),
    }


def lung_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The lung mask against the phantoms' true lungs (series with a truth)."""
    known = [r for r in rows if "lung_dice" in r]
    if not known:
        return {}
    lesioned = [r["lesion_in_mask"] for r in known if "lesion_in_mask" in r]
    return {
        "series": len(known),
        "lung_dice_mean": float(np.mean([r["lung_dice"] for r in known])),
        "lung_dice_min": float(np.min([r["lung_dice"] for r in known])),
        "lesion_in_mask_mean": float(np.mean(lesioned)) if lesioned else None,
        "lesion_in_mask_min": float(np.min(lesioned)) if lesioned else None,
        "air_called_lung_ml_max": float(np.max([r["air_called_lung_ml"] for r in known])),
        "false_lung_ml_mean": float(np.mean([r["false_lung_ml"] for r in known])),
        "region_voxels_outside_lungs": int(sum(r.get("region_voxels_outside_lungs", 0) for r in known)),
        "series_with_regions_outside_lungs": sum(1 for r in known if r.get("region_voxels_outside_lungs", 0) > 0),
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
        "name": Path(data_dir).name,
        "phantom_seeds": phantom_seeds(discover(Path(data_dir), labels_csv)),
    }
    report["seconds"] = time.perf_counter() - started
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    if record is not None and record_into is not None:
        record_metrics(record_into, record, report, command)
    return report


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
        "lungs": report.get("lungs", {}),
        "calibration": report.get("calibration", {}),
        "by_category": report.get("by_category", []),
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
