"""What the regions' lung-probability cut, and their growth through the fainter map, buy and cost:

    python -m benchmarks.region_cut --data PHANTOM_DIR [--weights model/weights] [--cut 0.8 --cut 0.95]
        [--grow 0.2 --grow none] [--grow-for covid --grow-for covid,cap]

Regions leave out the lung mask's doubtful voxels: dense voxels (at least AERATED_HU) where the lung
network's probability is under a cut (model.inference.localise.LocalisationSettings
.region_lung_probability). For every phantom series of a data set (``dicom-node phantom-dataset``,
its masks beside it) decided covid or cap, the series is read once as inference reads it
(``Predictor.predict_with_analysis``), then its regions are made again for each cut
(``Predictor.regions``, with the doubtful voxels of ``LungSegmenter.segment_with_doubt``) and
compared with the truth. Printed per cut: region voxels more than 3 mm outside the true lungs
(model.training.truth.regions_outside_lungs) and in how many series, the regions' mean Dice against
the lesion, and the share of disease series whose lung involvement is within 5 points of the truth
(the evaluation's measures, model.training.evaluate). ``--grow G`` (repeatable; ``none`` for no
growth) measures every cut again with the regions also grown through the map at or above G where
it touches them (LocalisationSettings.grow_threshold; the weights' own setting is always measured
too), for the decisions of each ``--grow-for`` (repeatable, comma-separated: ``--grow-for covid
--grow-for covid,cap``; LocalisationSettings.grow_classes, the weights' own by default). Synthetic
phantoms only: the figures say nothing about patients.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from model.contract.result import ABNORMAL_CLASSES
from model.inference import localise
from model.inference.multiscale_cam import Predictor, settings_for
from model.inference.weights import load_weights
from model.training import metrics, truth
from model.training.datasets import discover, evaluation_items, load_volume

DEFAULT_CUTS = (0.8, 0.9, 0.95)
Grow = tuple[float | None, tuple[str, ...]]  # grow threshold, the decisions it applies to


def _grow(text: str) -> float | None:
    """A --grow value: a threshold, or "none" for regions that do not grow through the map."""
    return None if text.strip().lower() == "none" else float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=Path("model/weights"))
    parser.add_argument("--cut", type=float, action="append", help="lung probability cut (repeatable)")
    parser.add_argument("--grow", type=_grow, action="append", help="grow threshold of the map, or none (repeatable)")
    parser.add_argument(
        "--grow-for", action="append", help="decisions whose regions grow, comma-separated (repeatable)"
    )
    args = parser.parse_args(argv)
    settings = settings_for(args.weights)
    loc = settings.localisation
    thresholds = tuple(dict.fromkeys((loc.grow_threshold, *(args.grow or ()))))
    classes = tuple(tuple(c.strip() for c in f.split(",") if c.strip()) for f in args.grow_for or ())
    own: Grow = (loc.grow_threshold, loc.grow_classes)
    # The weights' own growth first; growth for other decisions is the same as none when no
    # threshold is set: measured once.
    grows: tuple[Grow, ...] = tuple(
        dict.fromkeys(
            (own, *((g, c if g is not None else loc.grow_classes) for g in thresholds for c in classes or (own[1],)))
        )
    )
    cut_values = tuple(args.cut or DEFAULT_CUTS)
    cuts = tuple((c, g) for c in cut_values for g in grows)
    for cut, grow in cuts:  # refused with the reason when out of range
        dataclasses.replace(loc, region_lung_probability=cut, grow_threshold=grow[0], grow_classes=grow[1])
    model = load_weights(args.weights)
    # One predictor per growth, all on the one loaded model: each makes regions its own way.
    growers = {
        g: Predictor(
            model,
            dataclasses.replace(
                settings, localisation=dataclasses.replace(loc, grow_threshold=g[0], grow_classes=g[1])
            ),
        )
        for g in grows
    }
    predictor = growers[own]  # reads each series as the weights' own settings do
    segmenter = predictor.model.lungs
    if segmenter is None:
        raise SystemExit(f"{args.weights}: no lung network, no doubtful voxels")
    layouts = {r.series_id: r.layout for r in discover(args.data)}
    outside: dict[tuple[float, Grow], list[int]] = {c: [] for c in cuts}
    dices: dict[tuple[float, Grow], list[float]] = {c: [] for c in cuts}
    within5: dict[tuple[float, Grow], list[tuple[str, bool]]] = {c: [] for c in cuts}
    decided = 0
    for item in evaluation_items(args.data):
        if item.lung_mask is None:
            continue
        volume = load_volume(item.source, layouts[item.series_id])
        result, _ = predictor.predict_with_analysis(volume)
        if result.decision not in ABNORMAL_CLASSES or result.heatmap is None or result.lung_mask is None:
            continue
        decided += 1
        spacing = (float(volume.spacing[0]), float(volume.spacing[1]), float(volume.spacing[2]))
        lungs = np.asarray(item.lung_mask(), dtype=bool)
        lesion = np.asarray(item.lesion_mask(), dtype=bool) if item.lesion_mask is not None else None
        for cut in cut_values:
            mask, doubtful = segmenter.segment_with_doubt(volume.hu, spacing, doubt_below=cut)
            for grow, grower in growers.items():
                labels, _ = grower.regions(volume.hu, result.heatmap, mask, doubtful, spacing, result.decision)
                outside[(cut, grow)].append(truth.regions_outside_lungs(labels, lungs, spacing))
                if lesion is not None and lesion.any():
                    dices[(cut, grow)].append(metrics.dice(labels > 0, lesion))
                if item.label != "normal" and item.true_involvement_percent is not None:
                    error = abs(localise.involvement_percent(labels, mask) - item.true_involvement_percent)
                    within5[(cut, grow)].append((item.label, error <= 5.0))
        counts = " / ".join(str(outside[c][-1]) for c in cuts)
        print(f"{item.series_id}: {item.label}, decided {result.decision}; region voxels outside {counts}", flush=True)
    print(f"{decided} series decided covid or cap ({args.data}). Synthetic phantoms, not for clinical use.")
    print(
        "| cut, grow threshold (for) | region voxels > 3 mm outside the lungs (series) | region Dice "
        "| involvement within 5 points (true covid / cap) |"
    )
    print("| --- | --- | --- | --- |")
    for cut in cuts:
        series = sum(1 for n in outside[cut] if n > 0)
        dice = float(np.mean(dices[cut])) if dices[cut] else float("nan")
        inv = float(np.mean([w for _, w in within5[cut]])) if within5[cut] else float("nan")
        by_label = " / ".join(
            f"{np.mean([w for lab, w in within5[cut] if lab == label]):.2f}" for label in ABNORMAL_CLASSES
        )
        growth = "none" if cut[1][0] is None else f"{cut[1][0]:g} ({', '.join(cut[1][1])})"
        print(f"| {cut[0]:g}, {growth} | {sum(outside[cut]):,} ({series}) | {dice:.3f} | {inv:.2f} ({by_label}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
