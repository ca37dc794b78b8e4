"""The class-balanced focal loss of the method on hand-computed cases.

Covers model/training/loss.py: alpha = N / N_c, (1 - p_t)^gamma * CE per sample (MONAI's FocalLoss against the
formula written out), batch mean per scale, mean
over scales. Not covered: its use in training (test_train.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from model.training.loss import MultiScaleFocalLoss, class_balance_weights, focal_cross_entropy


def test_class_balance_weights_are_inverse_frequency() -> None:
    assert class_balance_weights([0, 0, 1, 2], 3).tolist() == [2.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="no training samples"):
        class_balance_weights([0, 0, 1], 3)
    with pytest.raises(ValueError):
        class_balance_weights([0, 3], 3)


def test_uniform_logits_by_hand() -> None:
    # p_t = 1/3, CE = ln 3, focal factor (1 - 1/3)^1 = 2/3.
    loss = focal_cross_entropy(torch.zeros(1, 3), torch.tensor([0]), gamma=1.0)
    assert float(loss) == pytest.approx(2 / 3 * math.log(3), rel=1e-6)
    weighted = focal_cross_entropy(torch.zeros(1, 3), torch.tensor([1]), alpha=torch.tensor([2.0, 4.0, 4.0]), gamma=1.0)
    assert float(weighted) == pytest.approx(4 * 2 / 3 * math.log(3), rel=1e-6)


def test_two_samples_by_hand_and_gamma_zero_is_weighted_ce_mean() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0])
    alpha = torch.tensor([1.5, 3.0])
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = 1 / (1 + math.e)
    expected = (1.5 * (1 - p0) * -math.log(p0) + 1.5 * (1 - p1) * -math.log(p1)) / 2
    assert float(focal_cross_entropy(logits, target, alpha, gamma=1.0)) == pytest.approx(expected, rel=1e-6)
    # gamma 0: alpha-weighted CE, averaged over the batch (not divided by the weights' sum).
    expected_ce = 1.5 * (-math.log(p0) - math.log(p1)) / 2
    assert float(focal_cross_entropy(logits, target, alpha, gamma=0.0)) == pytest.approx(expected_ce, rel=1e-6)
    # gamma 2: the confident sample is down-weighted more.
    expected_g2 = (1.5 * (1 - p0) ** 2 * -math.log(p0) + 1.5 * (1 - p1) ** 2 * -math.log(p1)) / 2
    assert float(focal_cross_entropy(logits, target, alpha, gamma=2.0)) == pytest.approx(expected_g2, rel=1e-6)


def test_total_is_mean_over_scales_and_has_gradients() -> None:
    scales = [
        torch.zeros(1, 3, requires_grad=True),
        torch.tensor([[0.0, math.log(2.0), 0.0]], requires_grad=True),
        torch.tensor([[10.0, 0.0, 0.0]], requires_grad=True),
    ]
    target = torch.tensor([0])
    per_scale = [float(focal_cross_entropy(s, target)) for s in scales]
    # Scale 2: p_t = 1/4, CE = ln 4, factor 3/4.
    assert per_scale[1] == pytest.approx(0.75 * math.log(4), rel=1e-6)
    total = MultiScaleFocalLoss(gamma=1.0)(scales, target)
    assert float(total) == pytest.approx(sum(per_scale) / 3, rel=1e-6)
    total.backward()
    assert all(s.grad is not None for s in scales)


def test_negative_gamma_rejected() -> None:
    with pytest.raises(ValueError):
        MultiScaleFocalLoss(gamma=-1.0)


def test_matches_the_formula_on_random_logits() -> None:
    """MONAI's FocalLoss underneath: the same numbers as the method's formula, written out."""
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3) * 3, torch.randint(0, 3, (16,))
    alpha = torch.tensor([1.5, 3.0, 6.0])
    for gamma in (0.0, 1.0, 2.0):
        log_p_t = torch.log_softmax(logits, dim=1).gather(1, target.view(-1, 1)).squeeze(1)
        expected = (alpha[target] * (1 - log_p_t.exp()) ** gamma * -log_p_t).mean()
        assert float(focal_cross_entropy(logits, target, alpha, gamma)) == pytest.approx(float(expected), rel=1e-5)
