"""What a phantom's ground truth lets evaluation check beyond the decision: the lung mask against
the true lungs, air that is not lung called lung (stomach and bowel gas, trachea), regions that lie
outside the lungs, and the categories of the per-category table (acquisition, confounders, disease
pattern) read from the phantom's description (model.phantoms)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from model.contract.result import ABNORMAL_CLASSES
from model.training import metrics

# A reported region voxel counts as outside the lungs when it lies farther than this from them.
OUTSIDE_LUNGS_MM = 3.0
# Voxels below this (HU) that are not lung are air: stomach or bowel gas, the trachea, outside.
AIR_HU = -900.0


def lung_mask_metrics(
    predicted: np.ndarray, true_lungs: np.ndarray, lesion: np.ndarray | None, hu: np.ndarray, spacing: Sequence[float]
) -> dict[str, Any]:
    """Dice of the lung mask, the share of lesion voxels inside it, and the volume of air outside
    the true lungs that it calls lung."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, Any] = {
        "lung_dice": metrics.dice(predicted, true_lungs),
        "air_called_lung_ml": float(np.count_nonzero(predicted & ~true_lungs & (hu < AIR_HU))) * voxel_ml,
        "false_lung_ml": float(np.count_nonzero(predicted & ~true_lungs)) * voxel_ml,
        "missed_lung_ml": float(np.count_nonzero(true_lungs & ~predicted)) * voxel_ml,
    }
    if lesion is not None and lesion.any():
        out["lesion_in_mask"] = float(np.count_nonzero(lesion & predicted)) / float(np.count_nonzero(lesion))
    return out


def regions_outside_lungs(region_labels: np.ndarray | None, true_lungs: np.ndarray, spacing: Sequence[float]) -> int:
    """Region voxels farther than OUTSIDE_LUNGS_MM from the true lungs."""
    if region_labels is None or not region_labels.any():
        return 0
    near = metrics.dilate_mm(true_lungs, spacing, OUTSIDE_LUNGS_MM)
    return int(np.count_nonzero((region_labels > 0) & ~near))


def categories(meta: dict[str, Any] | None) -> list[str]:
    """The rows of the per-category table a phantom belongs to."""
    if not meta:
        return []
    scan = meta.get("scan", {})
    out: list[str] = []
    thickness = float(scan.get("thickness", meta.get("slice_thickness", 0.0)))
    out.append(
        "slices <= 1.25 mm" if thickness <= 1.25 else "slices 1.5-2.5 mm" if thickness <= 2.5 else "slices 3-5 mm"
    )
    out.append(f"{scan.get('kernel', meta.get('kernel', 'soft'))} kernel")
    out.append("noise > 30 HU (low dose)" if float(meta.get("noise_sigma", 0.0)) > 30.0 else "noise <= 30 HU")
    out.append("contrast" if float(scan.get("contrast", 0.0)) > 0 else "no contrast")
    if float(scan.get("below", 0.0)) > 60.0:
        out.append("range into the abdomen (> 60 mm below the lungs)")
    if float(scan.get("above", 0.0)) > 40.0:
        out.append("range into the neck (> 40 mm above the lungs)")
    if float(scan.get("breathing", 0.0)) > 0:
        out.append("breathing motion")
    if float(scan.get("streaks", 0.0)) > 0:
        out.append("streaks at the shoulders")
    if scan.get("arms_up") is False:
        out.append("arms down")
    if abs(float(scan.get("rotation", 0.0))) > 3.0:
        out.append("rotated > 3 degrees")
    confounders = sorted({str(f["type"]) for f in meta.get("findings", []) if f.get("confounder")})
    out.extend(f"confounder: {c}" for c in confounders)
    if any(
        f.get("type") == "dependent atelectasis" and float(f.get("hu", -1000.0)) > -250.0
        for f in meta.get("findings", [])
    ):
        out.append("confounder: dependent atelectasis denser than -250 HU")
    if not confounders:
        out.append("no confounder")
    kind, pattern = str(meta.get("kind", "")), str(meta.get("pattern", "none"))
    out.append(f"{kind}: {pattern}" if kind != "normal" else "normal")
    return out


def category_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per category: series, decisions right, pneumonia-or-not right, indeterminate."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        for c in r.get("categories", []):
            by.setdefault(c, []).append(r)
    table = []
    for name in sorted(by, key=_category_order):
        sub = by[name]
        table.append(
            {
                "category": name,
                "series": len(sub),
                "accuracy": float(np.mean([r["decision"] == r["label"] for r in sub])),
                "pneumonia_right": float(np.mean([_pneumonia(r["decision"]) == _pneumonia(r["label"]) for r in sub])),
                "indeterminate": sum(1 for r in sub if r["decision"] == "indeterminate"),
            }
        )
    return table


def _pneumonia(label: str) -> bool | None:
    return None if label in ("indeterminate", "no_decision") else label in ABNORMAL_CLASSES


def _category_order(name: str) -> tuple[int, str]:
    group = (
        2 if name.startswith("confounder") or name == "no confounder" else 3 if ":" in name or name == "normal" else 1
    )
    return group, name
