"""Training augmentation of network-sized slices (model.training.choices.AUGMENTATIONS): a left-right
flip, a small affine (shift, scale, rotation) and an HU offset and gain, per slice. Up-down is never
flipped: posterior signs (dependent density, posterior ground glass) stay posterior."""

from __future__ import annotations

import torch

from model.inference.preprocess import InputSpec, window_bounds


def flip_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random left-right flip per slice (up-down never: posterior stays posterior)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, shift: float = 0.06, scale: float = 0.1, degrees: float = 8.0
) -> torch.Tensor:
    """Random left-right flip and affine (shift as a fraction of the size, scale, rotation) per
    slice, bilinear, edges replicated. Up-down is never flipped (posterior signs stay posterior)."""
    n = x.shape[0]
    u = torch.rand(n, 5, generator=generator)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    s = 1.0 + scale * (2 * u[:, 1] - 1)
    a = torch.deg2rad(degrees * (2 * u[:, 2] - 1))
    tx, ty = shift * 2 * (2 * u[:, 3] - 1), shift * 2 * (2 * u[:, 4] - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = flip * torch.cos(a) / s
    theta[:, 0, 1] = -torch.sin(a) / s
    theta[:, 1, 0] = flip * torch.sin(a) / s
    theta[:, 1, 1] = torch.cos(a) / s
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def intensity_batch(
    x: torch.Tensor, generator: torch.Generator, spec: InputSpec, offset_hu: float = 40.0, gain: float = 0.08
) -> torch.Tensor:
    """A random HU offset (+-``offset_hu``) and a gain about air (1 +- ``gain``) per slice, for
    window-normalised input: what differs between scanners' calibration and between patients'
    aeration, not between diseases."""
    low, high = window_bounds(spec.window)
    unit = 2.0 / (high - low)
    air = (-1000.0 - low) * unit - 1.0
    u = torch.rand(x.shape[0], 2, generator=generator)
    g = (1.0 + gain * (2 * u[:, 0] - 1)).view(-1, 1, 1, 1)
    o = (offset_hu * (2 * u[:, 1] - 1) * unit).view(-1, 1, 1, 1)
    return ((x - air) * g + air + o).clamp(-1.0, 1.0)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, spec: InputSpec) -> torch.Tensor:
    """The training augmentation ``kind`` (model.training.choices.AUGMENTATIONS) of a batch."""
    if kind == "none":
        return x
    if kind == "flip":
        return flip_batch(x, generator)
    x = augment_batch(x, generator)
    return intensity_batch(x, generator, spec) if kind == "flip+affine+intensity" else x
