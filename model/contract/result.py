"""What the model returns for one series: the contract between model/ and the rest of the node.

The JSON form (:meth:`SeriesResult.to_json`) is the output of ``dicom-node model predict`` and is
read by others: keep its keys stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.contract.notice import NOT_FOR_CLINICAL_USE

CLASSES: tuple[str, ...] = ("covid", "cap", "normal")
ABNORMAL_CLASSES: tuple[str, ...] = ("covid", "cap")  # the decisions with regions and involvement
DECISIONS: tuple[str, ...] = ("covid", "cap", "normal", "indeterminate", "no_decision")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    classes: tuple[str, ...] = CLASSES
    # sha256 of the weights file: the node derives the SR device UID from it, so that every
    # retrained model gets a new Device UID.
    weights_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "classes": list(self.classes),
            "weights_sha256": self.weights_sha256,
        }


@dataclass(frozen=True)
class Region:
    """A connected region of the thresholded joint map, in the series' slice order.

    Indices are 0-based into the sorted slices (ascending along the slice normal) and the
    original matrix; bounds are inclusive.
    """

    index: int  # 1-based label in SeriesResult.region_labels
    slice_range: tuple[int, int]
    bbox: tuple[int, int, int, int, int, int]  # (z0, y0, x0, z1, y1, x1), inclusive
    volume_ml: float
    mean_score: float
    max_score: float
    peak: tuple[int, int, int]  # (z, y, x) of the maximum

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "slice_range": list(self.slice_range),
            "bbox": list(self.bbox),
            "volume_ml": round(float(self.volume_ml), 3),
            "mean_score": round(float(self.mean_score), 4),
            "max_score": round(float(self.max_score), 4),
            "peak": list(self.peak),
        }


@dataclass(frozen=True)
class SeriesResult:
    """The result for one series. Its rules are checked when it is made (ValueError naming the
    field): a known decision and a reason; probabilities over known classes, each in [0, 1],
    summing to 1; per-slice lists and arrays of one length, that of ``sop_instance_uids``; key
    slices inside the series; no maps and no regions for ``no_decision``. What depends on the
    source series (its instances, frames, pixels) is checked by whoever reads it with them
    (dicom_node.outputs)."""

    probabilities: dict[str, float]  # keys: CLASSES; sum to 1; all 0 for no_decision is not allowed: use uniform
    decision: str  # one of DECISIONS
    reason: str  # why that decision (always set; for no_decision it says what is missing)
    model: ModelInfo
    regions: list[Region] = field(default_factory=list)
    lung_involvement_percent: float | None = None
    # Per sorted slice: the SOP Instance UID of the source image (for references in SR/SC/SEG/KOS).
    sop_instance_uids: list[str] = field(default_factory=list)
    # Indices into the sorted slices of the slices with the strongest findings, strongest first.
    key_slices: list[int] = field(default_factory=list)
    # Per sorted slice: True where the slice contains lung (the ones the model looked at).
    lung_slices: list[bool] = field(default_factory=list)
    # Arrays in the original series geometry (slices, rows, columns), slices ascending along
    # the slice normal. None for no_decision.
    heatmap: np.ndarray | None = None  # float32 in [0, 1], zero outside the lungs
    region_labels: np.ndarray | None = None  # uint16, 0 = background, k = Region.index
    lung_mask: np.ndarray | None = None  # bool
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision: {self.decision!r} is not one of {', '.join(DECISIONS)}")
        if not self.reason:
            raise ValueError("reason: a result always says why")
        unknown = sorted(set(self.probabilities) - set(CLASSES))
        if unknown:
            raise ValueError(f"probabilities: unknown class(es) {', '.join(unknown)}; known: {', '.join(CLASSES)}")
        if any(not 0.0 <= float(p) <= 1.0 for p in self.probabilities.values()):
            raise ValueError(f"probabilities: {self.probabilities} are not all in [0, 1]")
        if abs(sum(float(p) for p in self.probabilities.values()) - 1.0) > 1e-3:
            raise ValueError(f"probabilities: {self.probabilities} do not sum to 1")
        n = len(self.sop_instance_uids)
        if self.lung_slices and len(self.lung_slices) != n:
            raise ValueError(f"lung_slices has {len(self.lung_slices)} entries, sop_instance_uids {n}")
        if any(not 0 <= int(i) < n for i in self.key_slices):
            raise ValueError(f"key_slices {list(self.key_slices)} are not all inside the series (0-{n - 1})")
        shapes = set()
        for name in ("heatmap", "region_labels", "lung_mask"):
            array = getattr(self, name)
            if array is None:
                continue
            if array.ndim != 3 or array.shape[0] != n:
                raise ValueError(
                    f"{name} has shape {array.shape}; (slices, rows, columns) with {n} slices "
                    f"(sop_instance_uids) is needed"
                )
            shapes.add(array.shape)
        if len(shapes) > 1:
            raise ValueError(f"heatmap, region_labels and lung_mask differ in shape: {sorted(shapes)}")
        if self.decision == "no_decision" and (self.heatmap is not None or self.regions):
            raise ValueError("a no_decision result has no heatmap and no regions")

    def to_json(self) -> dict[str, Any]:
        return {
            "probabilities": {c: round(float(self.probabilities.get(c, 0.0)), 6) for c in CLASSES},
            "decision": self.decision,
            "reason": self.reason,
            "regions": [r.to_json() for r in self.regions],
            "lung_involvement_percent": None
            if self.lung_involvement_percent is None
            else round(float(self.lung_involvement_percent), 3),
            "key_slices": list(self.key_slices),
            "sop_instance_uids": list(self.sop_instance_uids),
            "model": self.model.to_json(),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "notice": NOT_FOR_CLINICAL_USE,
        }
