"""The training loss of the method: class-balanced focal-style cross-entropy, averaged over scales.

Per scale and per sample: ``alpha[y] * (1 - p_y) ** gamma * CE``, where ``p_y`` is the softmax
probability of the true class, ``CE = -log p_y`` and ``alpha[c] = N / N_c`` (inverse class
frequency in the training set). A scale's loss is the batch mean; the total is the mean over scales.
Per scale it is MONAI's ``FocalLoss`` (softmax, one-hot target, class weights): its per-class terms
summed over the classes are exactly the formula above (tests/model/test_loss.py pins it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.losses import FocalLoss
from torch import nn


def class_balance_weights(labels: Sequence[int] | np.ndarray | torch.Tensor, num_classes: int) -> torch.Tensor:
    """``alpha[c] = N / N_c`` over the training labels (one per slice, as the authors count).

    A class absent from the training set cannot be balanced: that is a data error, not a weight.
    """
    y = torch.as_tensor(labels, dtype=torch.long).flatten()
    if y.numel() == 0:
        raise ValueError("no training labels")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing:
        raise ValueError(f"classes {missing} have no training samples")
    return (y.numel() / counts).to(torch.float32)


def focal_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor | None = None, gamma: float = 1.0
) -> torch.Tensor:
    """Batch mean of ``alpha[y] * (1 - p_y) ** gamma * CE(logits, y)`` for one scale."""
    weight = None if alpha is None else alpha.to(logits.device, torch.float32)
    focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, weight=weight, reduction="none")
    # (batch, classes): only the true class's term is non-zero.
    return focal(logits.float(), target.view(-1, 1)).sum(dim=1).mean()


class MultiScaleFocalLoss(nn.Module):
    """The mean over scales of :func:`focal_cross_entropy`."""

    def __init__(self, alpha: torch.Tensor | None = None, gamma: float = 1.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.gamma = gamma
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits_per_scale: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if not logits_per_scale:
            raise ValueError("no scales")
        alpha: torch.Tensor | None = self.alpha  # type: ignore[assignment]  # a buffer: register_buffer makes it a Tensor (or None)
        losses = [focal_cross_entropy(logits, target, alpha, self.gamma) for logits in logits_per_scale]
        return torch.stack(losses).mean()
