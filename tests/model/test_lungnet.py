"""model.inference.lungnet: the learned lung network, with the shipped weights, on phantoms whose
lungs are known; and its working grid.

Covers: the working grid maps a mask there and back; the shipped lung network keeps most of a
consolidated lobe in the lungs, leaves stomach gas out and most of the liver dome, reaches Dice
>= 0.95 on phantoms of each class (0.97 wanted; 0.957 on a CAP phantom); its doubtful voxels (dense,
the network unsure) are dense voxels of the mask; a CAP series' regions lie inside the true lungs
but for under 0.5 % of their voxels. Where the shipped network falls short of the targets (all of a
consolidated lobe, nothing of the liver dome, no region voxel more than 3 mm outside the lungs),
the bound is what it measures, so that it cannot get worse unseen; model/README.md lists those
shortfalls. Not covered: real CT (no patient data here): these say the network learned what the
phantoms draw, nothing clinical. How long it takes is benchmarks/inference.py's, not a test's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from model.inference import lungnet
from model.inference.lungnet import AERATED_HU, GridSpec, WorkGrid
from model.inference.multiscale_cam import Predictor, settings_for
from model.inference.weights import WeightsError, load_lung_segmenter, load_weights, save_lung_weights, weights_folder
from model.phantoms.phantom import Phantom, make_phantom
from model.phantoms.writer import write_phantom_series
from model.training import truth
from model.training.metrics import dice


@pytest.fixture(scope="module")
def segmenter():  # type: ignore[no-untyped-def]  # -> LungSegmenter
    seg = load_lung_segmenter(weights_folder(None))
    assert seg is not None, "the shipped weights have no lung network"
    return seg


def _find(kind: str, pattern: str, *, rows: int = 192, start: int = 0, **kwargs: object) -> Phantom:
    """The first phantom from ``start`` on whose disease pattern is ``pattern``."""
    for seed in range(start, start + 60):
        p = make_phantom(kind, seed=seed, rows=rows, columns=rows, max_slices=100, **kwargs)  # type: ignore[arg-type]
        if p.pattern == pattern:
            return p
    raise AssertionError(f"no {kind} phantom with pattern {pattern} in 60 seeds")


def test_work_grid_round_trip() -> None:
    mask = np.zeros((60, 200, 180), dtype=bool)
    yy, xx = np.mgrid[:200, :180]
    for k in range(8, 52):
        r = 40 + 10 * np.sin(k / 9.0)
        mask[k] = (yy - 100) ** 2 / 1.4 + (xx - 90) ** 2 < r**2
    grid = WorkGrid.for_series(mask.shape, (1.25, 1.4, 1.4))
    assert grid.slabs == 15  # 5 mm slabs of 1.25 mm slices
    back = grid.to_series(grid.to_work(mask.astype(np.float32), 0.0))
    assert back.shape == mask.shape and dice(back, mask) > 0.97


def test_work_grid_round_trip_on_a_finer_grid() -> None:
    mask = np.zeros((40, 200, 180), dtype=bool)
    mask[5:35, 40:160, 30:150] = True
    spec = GridSpec.for_pixel(2.0)
    assert spec == GridSpec(xy_mm=2.0, size=224, z_mm=5.0)  # the same 448 mm square, in pixels of 16
    grid = WorkGrid.for_series(mask.shape, (2.5, 1.4, 1.4), spec)
    assert grid.resized == (140, 126) and grid.to_work(mask.astype(np.float32), 0.0).shape == (20, 224, 224)
    back = grid.to_series(grid.to_work(mask.astype(np.float32), 0.0))
    assert dice(back, mask) > 0.97


def test_the_lung_network_runs_on_the_grid_its_weights_record(tmp_path: Path, segmenter) -> None:  # type: ignore[no-untyped-def]
    assert segmenter.grid == GridSpec.for_pixel(2.4) != GridSpec()  # the shipped network: 2.4 mm, not the default
    spec = GridSpec.for_pixel(2.0)
    save_lung_weights(segmenter.network.state_dict(), tmp_path, lungnet.describe(spec))
    finer = load_lung_segmenter(tmp_path)
    assert finer is not None and finer.grid == spec
    p = make_phantom("cap", seed=2, rows=128, columns=128, max_slices=40)
    on_its_own, on_the_finer = segmenter.segment(p.hu, p.spacing), finer.segment(p.hu, p.spacing)
    assert on_the_finer.shape == p.hu.shape and dice(on_the_finer, p.lung_mask) > 0.8
    assert not np.array_equal(on_its_own, on_the_finer)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"work_size": 100}, "work_size"), ({"work_xy_mm": 0}, "work_xy_mm"), ({"window_hu": [-1000, 400]}, "window_hu")],
)
def test_a_bad_working_grid_is_refused_with_its_field(tmp_path: Path, segmenter, change: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    save_lung_weights(segmenter.network.state_dict(), tmp_path, lungnet.describe() | change)
    with pytest.raises(WeightsError, match=field):
        load_lung_segmenter(tmp_path)


@pytest.mark.slow
def test_a_consolidated_lobe_is_lung(segmenter) -> None:  # type: ignore[no-untyped-def]
    p = _find("cap", "lobar")
    mask = segmenter.segment(p.hu, p.spacing)
    m = truth.lung_mask_metrics(mask, p.lung_mask, p.lesion_mask, p.hu, p.spacing)
    # The target is >= 0.98 of the lesion inside the mask; the shipped network keeps 0.93 of this lobe
    # (0.4.1: 0.89; model/README.md, "Known failure modes"): this pins that it does not fall far.
    assert m["lesion_in_mask"] >= 0.8, m
    assert m["lung_dice"] >= 0.95, m


@pytest.mark.slow
def test_stomach_gas_liver_dome_and_trachea_are_not_lung(segmenter) -> None:  # type: ignore[no-untyped-def]
    # A scan that reaches well into the abdomen, with gas in the stomach.
    for seed in range(40):
        p = make_phantom("normal", seed=seed, rows=192, columns=192, max_slices=100)
        low = slice(0, p.shape[0] // 3)
        body = np.stack([ndi.binary_fill_holes(s > -400) for s in p.hu[low]])
        gas = body & (p.hu[low] < -900) & ~p.lung_mask[low]  # stomach and bowel gas under the domes
        if p.scan["below"] > 80 and gas.sum() > 50:
            break
    else:
        raise AssertionError("no phantom with stomach gas in 40 seeds")
    cut = settings_for(weights_folder(None)).localisation.region_lung_probability
    mask, doubtful = segmenter.segment_with_doubt(p.hu, p.spacing, doubt_below=cut)
    m = truth.lung_mask_metrics(mask, p.lung_mask, None, p.hu, p.spacing)
    assert m["air_called_lung_ml"] < 2.0, m
    dense_outside = mask & ~p.lung_mask & (p.hu > 0)  # liver, dome, chest wall called lung
    # Wanted: none; the shipped network calls 54 ml of the liver dome lung on this phantom (0.4.1:
    # 31 ml; model/README.md, "Known failure modes"): this pins that it does not get worse, and
    # that nearly all of it is doubtful (one voxel is not), so that regions leave it out.
    voxel_ml = float(np.prod(p.spacing)) / 1000.0
    assert dense_outside.sum() * voxel_ml < 60.0
    assert doubtful is not None and (dense_outside & ~doubtful).sum() * voxel_ml < 0.5
    assert m["lung_dice"] >= 0.97, m


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["covid", "cap", "normal"])
def test_dice_against_the_phantoms_lungs(segmenter, kind: str) -> None:  # type: ignore[no-untyped-def]
    scores = []
    for seed in (501, 502):
        p = make_phantom(kind, seed=seed, rows=256, columns=256, max_slices=120)
        mask = segmenter.segment(p.hu, p.spacing)
        scores.append(dice(mask, p.lung_mask))
        if p.lesion_mask.any():
            # Wanted >= 0.98; consolidation beside the heart is where the network errs (the shipped
            # network: cap 501 0.942, cap 502 0.902; 0.4.1: 0.922 and 0.866).
            assert np.count_nonzero(mask & p.lesion_mask) / np.count_nonzero(p.lesion_mask) >= 0.8
    assert min(scores) >= 0.95, scores


def test_doubtful_voxels_are_dense_voxels_of_the_mask(segmenter) -> None:  # type: ignore[no-untyped-def]
    p = _find("cap", "lobar", start=20)
    mask, none = segmenter.segment_with_doubt(p.hu, p.spacing)
    assert none is None  # 0.5: the mask's own cut, nothing in doubt
    same, doubtful = segmenter.segment_with_doubt(p.hu, p.spacing, doubt_below=0.9)
    assert np.array_equal(mask, same) and np.array_equal(mask, segmenter.segment(p.hu, p.spacing))
    assert doubtful is not None and doubtful.any()
    assert not (doubtful & ~mask).any()
    assert (p.hu[doubtful] >= AERATED_HU).all()
    # The more the probability asked for, the more is in doubt.
    fewer = segmenter.segment_with_doubt(p.hu, p.spacing, doubt_below=0.7)[1]
    assert fewer is not None and not (fewer & ~doubtful).any() and fewer.sum() < doubtful.sum()


@pytest.mark.slow
def test_no_region_outside_the_lungs(tmp_path: Path) -> None:
    p = _find("cap", "lobar", start=20)
    folder = write_phantom_series(p, tmp_path / "cap")
    result = Predictor(load_weights(None), settings_for(None)).predict(folder)
    assert result.decision == "cap" and result.region_labels is not None and result.region_labels.any()
    # Wanted: no region voxel more than 3 mm outside the true lungs. Regions leave out the mask's
    # doubtful dense voxels (LocalisationSettings.region_lung_probability): 363 of 17,924 region
    # voxels lay that far out with none left out, 36 of 15,351 with 0.4.1 at its cut of 0.8 (12 of
    # 14,086 at 0.9, 2 of 13,096 at 0.95: higher cuts cost lesion, docs/experiments.md section 8);
    # 0.4.2, at its cut of 0.9: 58 of 14,052 (0.4.3 also grows COVID-19 regions through the fainter
    # map, and 0.4.4 has a lung network fine-tuned on CAP, each within the same bound). Those left
    # lie where the lung network is sure of tissue that is not lung (0.4.1: below the dome;
    # model/README.md, "Known failure modes"); pinned here as under 0.5 % of the regions' voxels.
    outside = truth.regions_outside_lungs(result.region_labels, p.lung_mask, p.spacing)
    assert outside <= 0.005 * np.count_nonzero(result.region_labels), (outside, np.count_nonzero(result.region_labels))
