"""The slice-level network of the method (Hu et al. 2020): a VGG-16-like 2D encoder with three
class-activation-map heads (P3, P4, P5) and global max pooling, trained from scratch.

Every conv is 3x3, stride 1, padding 1, followed by BatchNorm and ReLU; every block ends with a 2x2
max-pool. A head is a 1x1 conv to ``num_classes`` channels + BatchNorm + ReLU (that output is the
scale's CAM), dropout (training only) and a global max pool over space (the scale's logits). There
is no fully connected layer. At inference the three scales' logits are averaged, then softmaxed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import nn
from torch.nn import functional as F

# The paper's encoder: (channels, convs) per block, and the blocks whose pooled output feeds a head.
DEFAULT_WIDTHS: tuple[int, ...] = (32, 64, 128, 256, 256)
DEFAULT_DEPTHS: tuple[int, ...] = (2, 2, 3, 3, 3)
DEFAULT_HEAD_BLOCKS: tuple[int, ...] = (3, 4, 5)  # 1-based block numbers: P3, P4, P5


def mixed_precision(device: torch.device) -> ContextManager[object]:
    """The autocast the networks score under (inference, validation, the candidate slices of
    training): float16 on CUDA, bfloat16 on a CPU whose oneDNN has bfloat16 kernels (AVX512-BF16 or
    AMX: about twice as fast as float32 there), float32 elsewhere. Weights stay float32. Training
    steps on a CPU stay float32 (model.training.train)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class NetworkOutput:
    """What one forward pass returns, per scale in the order of ``head_blocks`` (P3, P4, P5).

    ``cams[i]`` is (batch, classes, h_i, w_i), non-negative (after ReLU, before dropout);
    ``logits[i]`` is (batch, classes), the global max of the (dropped-out, in training) CAM.
    """

    cams: list[torch.Tensor]
    logits: list[torch.Tensor]

    @property
    def mean_logits(self) -> torch.Tensor:
        """The logits averaged over the scales: what the softmax of inference is taken over."""
        return torch.stack(self.logits, dim=0).mean(dim=0)


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class CamHead(nn.Module):
    """1x1 conv -> BatchNorm -> ReLU (the CAM) -> dropout (training only) -> global max pool."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        self.bn = nn.BatchNorm2d(num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = F.relu(self.bn(self.conv(x)))
        logits = torch.amax(self.dropout(cam), dim=(2, 3))
        return cam, logits


class WeaklySupervisedNet(nn.Module):
    """The multi-scale CAM network. Input (batch, in_channels, S, S) with S divisible by 2**blocks.

    Parameters are the paper's by default; tests build tiny versions with narrower ``widths``.
    """

    def __init__(
        self,
        num_classes: int = 3,
        in_channels: int = 1,
        widths: tuple[int, ...] = DEFAULT_WIDTHS,
        depths: tuple[int, ...] = DEFAULT_DEPTHS,
        head_blocks: tuple[int, ...] = DEFAULT_HEAD_BLOCKS,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {widths!r} and depths {depths!r} must be non-empty and of equal length")
        if (
            not head_blocks
            or any(not 1 <= b <= len(widths) for b in head_blocks)
            or list(head_blocks) != sorted(set(head_blocks))
        ):
            raise ValueError(f"head_blocks {head_blocks!r} must be increasing block numbers in 1..{len(widths)}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.widths = tuple(widths)
        self.depths = tuple(depths)
        self.head_blocks = tuple(head_blocks)
        self.dropout = dropout

        blocks: list[nn.Module] = []
        ch = in_channels
        for width, depth in zip(widths, depths):
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += _conv_bn_relu(ch, width)
                ch = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(CamHead(widths[b - 1], num_classes, dropout) for b in head_blocks)
        self.reset_parameters()

    @property
    def downsampling(self) -> int:
        """The factor the input size must be divisible by."""
        return 2 ** len(self.blocks)

    @property
    def scale_names(self) -> tuple[str, ...]:
        return tuple(f"P{b}" for b in self.head_blocks)

    def reset_parameters(self) -> None:
        """Xavier (Glorot) uniform init of every conv, zero biases; BatchNorm at identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        cams: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        head_iter = iter(zip(self.head_blocks, self.heads))
        next_head = next(head_iter, None)
        for number, block in enumerate(self.blocks, start=1):
            x = block(x)
            if next_head is not None and next_head[0] == number:
                cam, logit = next_head[1](x)
                cams.append(cam)
                logits.append(logit)
                next_head = next(head_iter, None)
            if next_head is None:
                break  # blocks after the last head contribute nothing
        return NetworkOutput(cams=cams, logits=logits)

    def architecture(self) -> dict[str, object]:
        """The constructor arguments, for the weights' metadata."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "widths": list(self.widths),
            "depths": list(self.depths),
            "head_blocks": list(self.head_blocks),
            "dropout": self.dropout,
        }


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
