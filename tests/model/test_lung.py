"""model.inference.lung: the classical (threshold) lung segmentation that weights without a lung
network use, measured against the phantoms' lung masks.

Covers: Dice >= 0.9 for covid and normal phantoms on 128 x 128 of two patients, the ground glass
inside the mask, that the trachea above the lungs is not lung, either slice direction, volumes
without lungs (empty mask), and one 512 x 512 phantom. Not covered: dense disease: a threshold keeps
aerated lung only and drops a consolidated lobe, which is why the shipped weights carry a lung
network (tests/model/test_lungnet.py covers CAP with it). Real CT is not covered either (no patient
data here).
"""

from __future__ import annotations

import numpy as np
import pytest

from model.inference.lung import _lateral_hull, segment_lungs
from model.phantoms.phantom import Phantom, make_phantom


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / max(1, int(np.count_nonzero(a)) + int(np.count_nonzero(b)))


@pytest.mark.parametrize("kind", ["covid", "normal"])
@pytest.mark.parametrize("seed", [1, 3])
def test_dice_against_phantom_lungs(kind: str, seed: int) -> None:
    p = make_phantom(kind, seed=seed, rows=128, columns=128, slices=40)
    mask = segment_lungs(p.hu, p.spacing, superior_last=True)
    assert mask.dtype == bool and mask.shape == p.shape
    assert dice(mask, p.lung_mask) >= 0.9
    if p.lesion_mask.any():
        inside = np.count_nonzero(mask & p.lesion_mask) / np.count_nonzero(p.lesion_mask)
        assert inside >= (0.9 if kind == "covid" else 0.5), inside


def test_dense_disease_against_the_chest_wall_is_lung_where_there_is_lung_towards_the_feet() -> None:
    # A round lung (image's left half: lateral = small columns) on slices 1-8, slice 8 the head end;
    # a dent of dense disease on its lateral side at the apex (slice 8) and at the base (slice 1).
    yy, xx = np.mgrid[:40, :40]
    disk = (yy - 20) ** 2 + (xx - 20) ** 2 <= 144
    dent = (yy - 20) ** 2 + (xx - 8) ** 2 <= 25
    mask = np.zeros((10, 40, 40), dtype=bool)
    mask[1:9] = disk
    mask[8] &= ~dent
    mask[1] &= ~dent
    filled = _lateral_hull(mask, medial_is_right=True, superior_last=True)
    assert filled[8][disk & dent].mean() >= 0.7  # the consolidated apex (up to the hull): lung towards the feet
    assert not filled[1][disk & dent].any()  # the base: nothing towards the feet (the diaphragm dome)
    reversed_ = _lateral_hull(mask[::-1], medial_is_right=True, superior_last=False)[::-1]
    assert (reversed_ == filled).all()
    # Without the orientation: lung on both sides, so neither end is filled.
    unknown = _lateral_hull(mask, medial_is_right=True, superior_last=None)
    assert not unknown[8][disk & dent].any() and not unknown[1][disk & dent].any()


def test_trachea_above_the_lungs_is_not_lung(small_phantoms: dict[str, Phantom]) -> None:
    p = small_phantoms["normal"]
    mask = segment_lungs(p.hu, p.spacing)
    top = np.flatnonzero(~p.lung_mask.any(axis=(1, 2)))
    top = top[top > p.shape[0] // 2]
    assert top.size > 0
    assert not mask[top].any()
    assert (p.hu[top[-1]] < -950).any()  # there is air there: the trachea


@pytest.mark.parametrize("superior_last", [False, None])
def test_feet_to_head_reversed(small_phantoms: dict[str, Phantom], superior_last: bool | None) -> None:
    p = small_phantoms["cap"]
    mask = segment_lungs(p.hu[::-1], p.spacing, superior_last=superior_last)
    assert dice(mask[::-1], p.lung_mask) >= 0.9


def test_no_lungs_gives_an_empty_mask() -> None:
    z, y, x = np.mgrid[0:20, 0:96, 0:96]
    r = np.sqrt((y - 48.0) ** 2 + (x - 48.0) ** 2)
    head = np.where(r < 40, 40.0, -1000.0).astype(np.float32)  # soft tissue in air
    head[(r > 36) & (r < 40)] = 900.0  # a skull
    for volume in (head, np.full((10, 64, 64), -1000.0, np.float32), np.full((10, 64, 64), 30.0, np.float32)):
        mask = segment_lungs(volume, (2.5, 2.0, 2.0))
        assert mask.shape == volume.shape and not mask.any()
    assert not segment_lungs(np.zeros((0, 64, 64), np.float32), (1.0, 1.0, 1.0)).any()


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        segment_lungs(np.zeros((64, 64), np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        segment_lungs(np.zeros((4, 64, 64), np.float32), (0.0, 1.0, 1.0))


@pytest.mark.slow
def test_full_size_phantom() -> None:
    p = make_phantom("normal", seed=2, slices=64)  # 512 x 512
    assert p.shape == (64, 512, 512)
    mask = segment_lungs(p.hu, p.spacing)
    assert dice(mask, p.lung_mask) >= 0.9
