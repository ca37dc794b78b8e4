"""The network of the method: per-scale output shapes, parameter count, heads, init, validation.

Covers model/inference/network.py only (tiny networks through constructor arguments, one forward of the
full-size network at 224). Not covered here: training (test_train.py), localisation (test_localise.py).
"""

from __future__ import annotations

import pytest
import torch

from model.inference.network import DEFAULT_DEPTHS, DEFAULT_WIDTHS, WeaklySupervisedNet, count_parameters


def _expected_parameters(
    widths: tuple[int, ...], depths: tuple[int, ...], heads: tuple[int, ...], classes: int, in_ch: int = 1
) -> int:
    total, ch = 0, in_ch
    for w, d in zip(widths, depths):
        for _ in range(d):
            total += 9 * ch * w + w + 2 * w  # 3x3 conv + bias, BatchNorm scale + shift
            ch = w
    for b in heads:
        total += widths[b - 1] * classes + classes + 2 * classes  # 1x1 conv + bias, BatchNorm
    return total


def test_full_network_shapes_per_scale() -> None:
    net = WeaklySupervisedNet().eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 224, 224))
    assert [tuple(c.shape) for c in out.cams] == [(2, 3, 28, 28), (2, 3, 14, 14), (2, 3, 7, 7)]
    assert [tuple(logits.shape) for logits in out.logits] == [(2, 3)] * 3
    assert net.scale_names == ("P3", "P4", "P5")
    assert tuple(out.mean_logits.shape) == (2, 3)


def test_parameter_count_of_the_paper_network() -> None:
    net = WeaklySupervisedNet()
    assert count_parameters(net) == _expected_parameters(DEFAULT_WIDTHS, DEFAULT_DEPTHS, (3, 4, 5), 3) == 3_685_755
    binary = WeaklySupervisedNet(num_classes=2)
    assert count_parameters(binary) == _expected_parameters(DEFAULT_WIDTHS, DEFAULT_DEPTHS, (3, 4, 5), 2)


def test_tiny_network_shapes_and_logits_are_global_max_of_cam() -> None:
    net = WeaklySupervisedNet(num_classes=2, widths=(4, 4, 8, 8, 8), depths=(1, 1, 1, 1, 1)).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 1, 64, 64))
    assert [tuple(c.shape) for c in out.cams] == [(3, 2, 8, 8), (3, 2, 4, 4), (3, 2, 2, 2)]
    for cam, logits in zip(out.cams, out.logits):
        assert torch.all(cam >= 0)  # CAM is after ReLU
        assert torch.allclose(logits, cam.amax(dim=(2, 3)))  # global max pooling, no FC layer
    assert torch.allclose(out.mean_logits, torch.stack(out.logits).mean(0))


def test_dropout_only_in_training() -> None:
    net = WeaklySupervisedNet(widths=(4, 4, 4, 4, 4), depths=(1, 1, 1, 1, 1), dropout=0.5)
    x = torch.randn(4, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        a, b = net(x).mean_logits, net(x).mean_logits
    assert torch.equal(a, b)
    assert sum(isinstance(m, torch.nn.Dropout) for m in net.modules()) == 3


def test_xavier_init_and_heads_on_chosen_blocks() -> None:
    torch.manual_seed(0)
    net = WeaklySupervisedNet(widths=(8, 8, 16, 16, 16), depths=(1, 1, 1, 1, 1), head_blocks=(4, 5))
    conv = next(m for m in net.blocks.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.bias is not None
    bound = (6.0 / (conv.in_channels * 9 + conv.out_channels * 9)) ** 0.5
    assert float(conv.weight.detach().abs().max()) <= bound and bool(torch.all(conv.bias == 0))
    out = net.eval()(torch.randn(1, 1, 32, 32))
    assert len(out.cams) == 2 and tuple(out.cams[0].shape[-2:]) == (2, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 1},
        {"widths": (4, 4), "depths": (1,)},
        {"head_blocks": (6,)},
        {"head_blocks": (5, 3)},
        {"dropout": 1.0},
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WeaklySupervisedNet(**kwargs)
