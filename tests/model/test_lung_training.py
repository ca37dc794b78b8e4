"""model.training.lungs: what the lung network's training weighs, and fine-tuning from a weights folder.

Covers: dense pixels on both sides of the lung border weigh DENSE_WEIGHT (dense lung, and the
effusion / chest wall against it), aerated lung and far-away tissue weigh one; training started
from a weights folder starts from its lung network (a step at learning rate 0 leaves it unchanged);
a folder without a lung network is refused by name. Not covered: whether the trained network is
good (tests/model/test_lungnet.py measures the shipped one).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.inference import lungnet
from model.inference.lungnet import GridSpec, build_lung_net
from model.inference.weights import save_lung_weights
from model.training.lungs import DENSE_WEIGHT, HARD_WEIGHT, LungSample, lung_state, pixel_weights, train_lung_net


def test_dense_pixels_on_both_sides_of_the_lung_border_weigh_more() -> None:
    hu = torch.full((1, 1, 64, 64), -850.0)
    lungs = torch.zeros((1, 1, 64, 64))
    lungs[..., 10:40, 10:30] = 1.0
    hu[..., 20:30, 20:30] = 0.0  # consolidation inside the lung, against its border
    hu[..., 20:30, 30:36] = 10.0  # effusion just outside it
    hu[..., :, 60:] = 40.0  # chest wall far from the lung
    w = pixel_weights(hu, lungs)
    assert w[0, 0, 25, 25] == DENSE_WEIGHT
    assert w[0, 0, 25, 33] == DENSE_WEIGHT
    assert w[0, 0, 15, 15] == 1.0  # aerated lung
    assert w[0, 0, 25, 62] == 1.0  # dense, but far from the lung
    heavier = pixel_weights(hu, lungs, dense_lung_weight=12.0)  # only the dense lung counts more
    assert heavier[0, 0, 25, 25] == 12.0
    assert heavier[0, 0, 25, 33] == DENSE_WEIGHT
    assert heavier[0, 0, 15, 15] == 1.0


def test_pixels_the_network_gets_wrong_weigh_more() -> None:
    hu = torch.full((1, 1, 32, 32), -850.0)
    lungs = torch.zeros((1, 1, 32, 32))
    lungs[..., 8:24, 8:24] = 1.0
    hu[..., 10:14, 24:28] = 10.0  # effusion beside the lung
    logits = torch.where(lungs > 0, 3.0, -3.0)
    logits[..., 10:14, 24:28] = 2.0  # the effusion called lung
    logits[..., 16, 16] = -1.0  # one lung pixel missed
    w = pixel_weights(hu, lungs, logits)
    assert w[0, 0, 12, 25] == DENSE_WEIGHT * HARD_WEIGHT
    assert w[0, 0, 16, 16] == HARD_WEIGHT
    assert w[0, 0, 12, 12] == 1.0
    assert w[0, 0, 30, 30] == 1.0


def _sample(name: str) -> LungSample:
    hu = torch.full((6, 64, 64), -900.0, dtype=torch.float16)
    mask = torch.zeros((6, 64, 64), dtype=torch.bool)
    mask[:, 16:48, 8:28] = True
    mask[:, 16:48, 36:56] = True
    hu[mask] = -850.0
    return LungSample(name, hu, mask)


def test_fine_tuning_starts_from_the_given_lung_network(tmp_path: Path) -> None:
    torch.manual_seed(1)
    start = {k: v.clone() for k, v in build_lung_net().state_dict().items()}
    save_lung_weights(start, tmp_path, lungnet.describe())
    loaded, grid = lung_state(tmp_path)
    assert grid == GridSpec()
    assert all(torch.equal(loaded[k], start[k]) for k in start)
    result = train_lung_net([_sample("a")], [_sample("b")], iterations=1, learning_rate=0.0, init=loaded)
    parameters = [name for name, _ in build_lung_net().named_parameters()]  # not the norms' running statistics
    assert parameters and all(torch.equal(result.state[k], start[k]) for k in parameters)


def test_a_folder_without_a_lung_network_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no lung network"):
        lung_state(tmp_path)
