"""What the caller of a predictor may choose at load time, whatever the model kind
(model.inference.kinds): the device and the overrides of the weights' own inference settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceOptions:
    """``None`` keeps what the weights' metadata chose. A kind uses the options that mean
    something to it (a model without Integrated Gradients ignores ``ig_slices``)."""

    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    batch_size: int = 32
    localisation: str | None = None  # "cam" or "cam+ig"
    ig_slices: int | None = None
    threshold: float | None = None  # region threshold of the joint map, in (0, 1)
    aggregation: str | None = None  # the series rule: "top_k" or "mean"
