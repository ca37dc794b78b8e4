"""Where the lung mask misses lesion voxels, and what a dense-edge rule would buy:

    python -m benchmarks.lung_edge --data PHANTOM_DIR [--weights model/weights]

For every phantom series with a lesion (a data set of ``dicom-node phantom-dataset``, its masks
beside it), the lung mask as inference makes it (model.inference.lung.find_lungs) against the
true lesion: how many lesion voxels lie outside the mask, the lung network's interpolated
probability there, their HU, how far they are from the mask and how deep in the true lungs (mm).

Then a rule the mask does not use, tried for several radii: dense voxels (at least AERATED_HU) of
the uncertain band (interpolated probability between BAND[0] and 0.5) within R mm in-plane of
solid dense lung (mask voxels at least AERATED_HU surviving a 4 mm opening) join the mask. Printed:
the share of lesion voxels inside the mask, the mask's Dice against the true lungs, and the voxels
it adds inside and outside the true lungs. Synthetic phantoms only: the figures say nothing about
patients.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from model.inference.lung import find_lungs
from model.inference.lungnet import AERATED_HU, BAND, WINDOW_HU, LungSegmenter, WorkGrid, keep_lung_components
from model.inference.weights import load_lung_segmenter
from model.training.datasets import discover, load_volume, read_phantom_truth
from model.training.metrics import dice

RADII_MM = (3.0, 5.0, 8.0)
OPENING_MM = 4.0


def interpolated_probability(
    segmenter: LungSegmenter, hu: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The lung network's probability on the series' own grid, interpolated as the mask's is
    (model.inference.lungnet.WorkGrid.to_series), before its thresholds."""
    grid = WorkGrid.for_series(hu.shape, spacing, segmenter.grid)
    work = keep_lung_components(segmenter.probabilities(grid.to_work(hu, WINDOW_HU[0])))
    return grid.in_plane(grid.along_slices(work), np.arange(grid.slices))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=Path("model/weights"))
    args = parser.parse_args(argv)
    segmenter = load_lung_segmenter(args.weights)
    if segmenter is None:
        raise SystemExit(f"{args.weights}: no lung network")
    inside: list[float] = []
    inside_rule: dict[float, list[float]] = {r: [] for r in RADII_MM}
    dices: list[float] = []
    dice_rule: dict[float, list[float]] = {r: [] for r in RADII_MM}
    added = {r: [0, 0] for r in RADII_MM}  # voxels added inside / outside the true lungs
    missed_p, missed_hu, missed_dist, missed_depth = [], [], [], []
    for record in discover(args.data, None):
        volume = load_volume(record.source, record.layout)
        truth = read_phantom_truth(record.source)
        hu = volume.hu
        spacing = (float(volume.spacing[0]), float(volume.spacing[1]), float(volume.spacing[2]))
        mask = find_lungs(hu, spacing, segmenter=segmenter)
        lesion, lungs = truth.lesion_mask, truth.lung_mask
        dices.append(dice(mask, lungs))
        prob = interpolated_probability(segmenter, hu, spacing)
        dense = hu >= AERATED_HU
        band = (prob > BAND[0]) & (prob <= 0.5) & dense & ~mask
        side = 2 * _px(OPENING_MM * 0.8, spacing) + 1
        square = np.ones((1, side, side), bool)
        solid = ndimage.binary_opening(mask & dense, structure=square)
        if lesion.any():
            inside.append(np.count_nonzero(lesion & mask) / np.count_nonzero(lesion))
            miss = lesion & ~mask
            if miss.any():
                missed_p.append(prob[miss])
                missed_hu.append(hu[miss])
                missed_dist.append(ndimage.distance_transform_edt(~mask, sampling=spacing)[miss])
                missed_depth.append(ndimage.distance_transform_edt(lungs, sampling=spacing)[miss])
        for radius in RADII_MM:
            r = _px(radius, spacing)
            yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
            disk = ((yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= radius**2)[None]
            add = band & ndimage.binary_dilation(solid, structure=disk)
            added[radius][0] += int(np.count_nonzero(add & lungs))
            added[radius][1] += int(np.count_nonzero(add & ~lungs))
            grown = mask | add
            dice_rule[radius].append(dice(grown, lungs))
            if lesion.any():
                inside_rule[radius].append(np.count_nonzero(lesion & grown) / np.count_nonzero(lesion))
        print(f"{record.series_id} {truth.kind}: lesion inside {inside[-1] if lesion.any() else 1.0:.3f}", flush=True)
    print(f"\n{len(dices)} series, {len(inside)} with a lesion")
    if missed_p:
        p, h = np.concatenate(missed_p), np.concatenate(missed_hu)
        d, depth = np.concatenate(missed_dist), np.concatenate(missed_depth)
        print(
            f"lesion voxels outside the mask: {p.size}; probability <= {BAND[0]}: {np.mean(p <= BAND[0]):.2f}; "
            f"median probability {np.median(p):.2f}, HU {np.median(h):.0f}, mm from the mask {np.median(d):.1f} "
            f"(90th percentile {np.percentile(d, 90):.1f}), mm deep in the true lungs {np.median(depth):.1f} "
            f"(90th percentile {np.percentile(depth, 90):.1f})"
        )
    worst = np.min(inside)
    print(f"the mask: lesion voxels inside {np.mean(inside):.4f} (worst {worst:.3f}), Dice {np.mean(dices):.4f}")
    for radius in RADII_MM:
        print(
            f"with the dense-edge rule, {radius:g} mm: lesion voxels inside {np.mean(inside_rule[radius]):.4f} "
            f"(worst {np.min(inside_rule[radius]):.3f}), Dice {np.mean(dice_rule[radius]):.4f}, "
            f"voxels added inside / outside the true lungs {added[radius][0]:,} / {added[radius][1]:,}"
        )
    return 0


def _px(mm: float, spacing: tuple[float, float, float]) -> int:
    return max(1, int(round(mm / spacing[1])))


if __name__ == "__main__":
    sys.exit(main())
