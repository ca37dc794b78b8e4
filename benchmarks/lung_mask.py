"""The lung network of one or more weights folders against the phantoms' true lungs:

    python -m benchmarks.lung_mask --data PHANTOM_DIR --weights model/weights [--weights OTHER ...]

For every phantom series of a data set made by ``dicom-node phantom-dataset`` (its masks file
beside it), each weights folder's lung mask (model.inference.lung.find_lungs, as inference makes
it) is compared with the true lungs by model.training.truth.lung_mask_metrics: Dice, the share of
lesion voxels inside the mask, lung called where there is none (false lung, and of it air: stomach
or bowel gas, trachea) and lung missed. Prints one row per weights folder (means over the series,
the worst series, totals in ml) and, with --per-series, one row per series and folder; --json
writes them all. ``--work-xy-mm MM`` (repeatable) also runs each folder's network on a working grid of
MM pixels it was not trained on (model.inference.lungnet.GridSpec.for_pixel), a row per grid: what a
finer grid would place, before any training on it. Synthetic phantoms only: the figures say nothing
about patients.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from model.inference.lung import find_lungs
from model.inference.lungnet import GridSpec, LungSegmenter
from model.inference.weights import load_lung_segmenter
from model.training.datasets import discover, load_volume, read_phantom_truth
from model.training.evaluate import lung_summary
from model.training.truth import lung_mask_metrics


def measure(
    data: Path, weights: list[Path], per_series: bool = False, grids_mm: Sequence[float] = ()
) -> dict[str, Any]:
    records = discover(data, None)
    segmenters: dict[str, LungSegmenter | None] = {}
    for w in weights:
        own = segmenters[str(w)] = load_lung_segmenter(w)
        for mm in grids_mm:  # the same network, on another grid
            grid = None if own is None else GridSpec.for_pixel(mm, own.grid.z_mm)
            segmenters[f"{w} at {mm:g} mm"] = None if own is None else LungSegmenter(own.network, own.device, grid=grid)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in segmenters}
    for record in records:
        volume = load_volume(record.source, record.layout)
        truth = read_phantom_truth(record.source)
        spacing = tuple(float(s) for s in volume.spacing)
        for name, segmenter in segmenters.items():
            if segmenter is None:
                raise SystemExit(f"{name}: no lung network")
            started = time.perf_counter()
            mask = find_lungs(volume.hu, spacing, segmenter=segmenter)  # type: ignore[arg-type]
            seconds = time.perf_counter() - started
            lesion = truth.lesion_mask if truth.lesion_mask.any() else None
            row = lung_mask_metrics(mask, truth.lung_mask, lesion, volume.hu, spacing)
            row |= {"series": record.series_id, "kind": truth.kind, "seconds": round(seconds, 2)}
            rows[name].append(row)
            if per_series:
                print(_series_line(name, row), flush=True)
    return {name: {"summary": _summary(r), "series": r} for name, r in rows.items()}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``dicom-node model evaluate`` reports of the lung mask, and the totals in ml."""
    return lung_summary(rows) | {
        "false_lung_ml": float(np.sum([r["false_lung_ml"] for r in rows])),
        "air_called_lung_ml": float(np.sum([r["air_called_lung_ml"] for r in rows])),
        "missed_lung_ml": float(np.sum([r["missed_lung_ml"] for r in rows])),
        "seconds_mean": float(np.mean([r["seconds"] for r in rows])),
    }


def _series_line(name: str, r: dict[str, Any]) -> str:
    inside = r.get("lesion_in_mask")
    return (
        f"{name}  {r['series']:<24} {r['kind']:<6} dice {r['lung_dice']:.4f}  lesion in mask "
        f"{'-' if inside is None else f'{inside:.3f}'}  false {r['false_lung_ml']:.1f} ml  missed "
        f"{r['missed_lung_ml']:.1f} ml"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="a phantom data set (dicom-node phantom-dataset)")
    p.add_argument("--weights", required=True, type=Path, action="append", help="weights folder (repeatable)")
    p.add_argument("--per-series", action="store_true")
    p.add_argument(
        "--work-xy-mm", type=float, action="append", default=[], metavar="MM", help="also on this grid (repeatable)"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = measure(args.data, args.weights, args.per_series, args.work_xy_mm)
    print(
        f"{'weights':<40} {'series':>6} {'Dice':>7} {'min':>7} {'lesion in':>9} {'min':>6} "
        f"{'false ml':>9} {'air ml':>7} {'missed ml':>9} {'s':>5}"
    )
    for name, r in result.items():
        s = r["summary"]
        inside, low = s["lesion_in_mask_mean"], s["lesion_in_mask_min"]
        print(
            f"{name:<40} {s['series']:>6} {s['lung_dice_mean']:>7.4f} {s['lung_dice_min']:>7.4f} "
            f"{'-' if inside is None else f'{inside:.3f}':>9} {'-' if low is None else f'{low:.3f}':>6} "
            f"{s['false_lung_ml']:>9.1f} {s['air_called_lung_ml']:>7.1f} {s['missed_lung_ml']:>9.1f} "
            f"{s['seconds_mean']:>5.2f}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
