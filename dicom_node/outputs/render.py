"""The heatmap overlay picture: one CT slice in the lung window with the model's heatmap blended
over it, a colour bar and a label. Used for the secondary-capture series and, as PNG, for the
admin preview.

Layout (the corners of an axial chest CT are air, away from the lungs): the label is in the
top-left corner, the colour bar in the bottom-right corner. Nothing identifying the patient is
drawn. Colour: matplotlib's "inferno" (perceptually uniform, readable in grey scale), never jet.
"""

from __future__ import annotations

import functools
import io
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from dicom_node import __version__
from dicom_node.outputs import codes
from model.contract.result import CLASSES, SeriesResult

LUNG_WINDOW_CENTER = -600.0
LUNG_WINDOW_WIDTH = 1500.0
COLORMAP = "inferno"
DEFAULT_THRESHOLD = 0.3
# Opacity of the heatmap at the threshold and at 1.0.
ALPHA_MIN = 0.35
ALPHA_MAX = 0.75
# The part of the colormap used above the threshold (its darkest end is invisible on lung).
COLOR_LOW = 0.3


def lung_window(hu: np.ndarray, center: float = LUNG_WINDOW_CENTER, width: float = LUNG_WINDOW_WIDTH) -> np.ndarray:
    """HU to uint8 grey: ``(hu - (center - width/2)) / width`` clipped to [0, 1], times 255, rounded."""
    low = center - width / 2.0
    grey = np.clip((np.asarray(hu, dtype=np.float32) - low) / width, 0.0, 1.0)
    out: np.ndarray = np.rint(grey * 255.0).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=4)
def colormap_lut(name: str = COLORMAP) -> np.ndarray:
    """A (256, 3) uint8 lookup table of a matplotlib colormap."""
    rgba = colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.rint(rgba[:, :3] * 255.0).astype(np.uint8)


def _heat_color_index(heat: np.ndarray, threshold: float) -> np.ndarray:
    """Heatmap value (>= threshold) to a LUT index in the visible part of the colormap."""
    t = np.clip((heat - threshold) / max(1e-6, 1.0 - threshold), 0.0, 1.0)
    return np.rint((COLOR_LOW + (1.0 - COLOR_LOW) * t) * 255.0).astype(np.intp)


def blend_heatmap(grey: np.ndarray, heat: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """RGB uint8: the grey image with the heatmap alpha-blended where ``heat >= threshold``;
    fully transparent (the grey pixel unchanged) below it."""
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0)
    shown = heat >= threshold
    if not shown.any():
        return rgb
    h = heat[shown]
    t = np.clip((h - threshold) / max(1e-6, 1.0 - threshold), 0.0, 1.0)
    alpha = (ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * t)[:, None]
    color = colormap_lut()[_heat_color_index(h, threshold)].astype(np.float32)
    base = rgb[shown].astype(np.float32)
    rgb[shown] = np.rint(base * (1.0 - alpha) + color * alpha).astype(np.uint8)
    return rgb


def _wrap(line: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> list[str]:
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    out: list[str] = []
    for word in line.split(" "):
        if out and probe.textlength(f"{out[-1]} {word}", font=font) <= width:
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    return out


def _fitted_label(
    rows: int, cols: int, lines: tuple[str, ...]
) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, list[str]]:
    """The largest font (about 1/40 of the matrix, 6-24 px) with which every line fits in 58 % of
    the width, so the label stays in its corner; on very small matrices the lines are wrapped."""
    width = 0.58 * cols
    size = max(7, min(24, min(rows, cols) // 40))
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    while size > 6:
        font = _font(size)
        if all(probe.textlength(line, font=font) <= width for line in lines):
            return font, list(lines)
        size -= 1
    font = _font(6)
    return font, [part for line in lines for part in _wrap(line, font, width)]


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled default font: nothing is downloaded or read from the system.
    return ImageFont.load_default(size=size)


def _text_box(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> tuple[int, int, int, int]:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    return int(left), int(top), int(right), int(bottom)


@functools.lru_cache(maxsize=16)
def _annotation(rows: int, cols: int, label: tuple[str, ...], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The label and colour bar drawn once per (size, text): RGB values and a coverage mask."""
    canvas = Image.new("RGB", (cols, rows), (0, 0, 0))
    mask = Image.new("L", (cols, rows), 0)
    draw, mdraw = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    font, lines = _fitted_label(rows, cols, label)
    margin = max(1, cols // 128)
    # Label: white text on a black box, top-left.
    if lines:
        y, boxes = margin + 1, []
        for line in lines:
            box = _text_box(draw, (margin + 1, y), line, font)
            boxes.append(box)
            y = box[3] + 1
        block = (margin - 1, margin - 1, max(b[2] for b in boxes) + 1, max(b[3] for b in boxes) + 1)
        draw.rectangle(block, fill=(0, 0, 0))
        mdraw.rectangle(block, fill=255)
        y = margin + 1
        for line in lines:
            draw.text((margin + 1, y), line, fill=(255, 255, 255), font=font)
            y = _text_box(draw, (margin + 1, y), line, font)[3] + 1
    # Colour bar: the colormap from the threshold (bottom) to 1.0 (top), bottom-right, with the
    # two end values written to its left.
    bar_h = max(16, rows // 5)
    bar_w = max(4, cols // 48)
    x1, y1 = cols - margin - 1, rows - margin - 1
    x0, y0 = x1 - bar_w + 1, y1 - bar_h + 1
    values = np.linspace(1.0, threshold, bar_h, dtype=np.float32)
    arr = np.asarray(canvas).copy()
    arr[y0 : y1 + 1, x0 : x1 + 1] = colormap_lut()[_heat_color_index(values, threshold)][:, None, :]
    canvas = Image.fromarray(arr)
    draw = ImageDraw.Draw(canvas)
    mdraw.rectangle((x0, y0, x1, y1), fill=255)
    small = _font(max(6, min(font.size if isinstance(font, ImageFont.FreeTypeFont) else 8, bar_h // 3)))
    for text, anchor_y, align_top in (("1.0", y0, True), (f"{threshold:.2f}".rstrip("0").rstrip("."), y1, False)):
        left, top, right, bottom = _text_box(draw, (0, 0), text, small)
        tx = x0 - 2 - (right - left) - left
        ty = anchor_y - top if align_top else anchor_y - bottom
        box = (tx + left - 1, ty + top - 1, tx + right + 1, ty + bottom + 1)
        draw.rectangle(box, fill=(0, 0, 0))
        mdraw.rectangle(box, fill=255)
        draw.text((tx, ty), text, fill=(255, 255, 255), font=small)
    rgb = np.asarray(canvas).copy()
    covered = np.asarray(mask) > 0
    rgb.setflags(write=False)
    covered.setflags(write=False)
    return rgb, covered


def render_overlay(
    hu_slice: np.ndarray,
    heat_slice: np.ndarray | None,
    lines: Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """One overlay picture: RGB uint8 (rows, columns, 3).

    ``hu_slice`` in Hounsfield units, ``heat_slice`` in [0, 1] (None: no heatmap), ``lines`` the
    label text (see :func:`label_lines`).
    """
    hu_slice = np.asarray(hu_slice)
    if hu_slice.ndim != 2:
        raise ValueError(f"hu_slice must be 2-D, got shape {hu_slice.shape}")
    if heat_slice is not None and np.shape(heat_slice) != hu_slice.shape:
        raise ValueError(f"heat_slice shape {np.shape(heat_slice)} differs from hu_slice shape {hu_slice.shape}")
    grey = lung_window(hu_slice)
    rgb = (
        blend_heatmap(grey, heat_slice, threshold) if heat_slice is not None else np.repeat(grey[:, :, None], 3, axis=2)
    )
    rows, cols = hu_slice.shape
    annotation, covered = _annotation(rows, cols, tuple(lines), float(threshold))
    rgb[covered] = annotation[covered]
    return rgb


def label_lines(result: SeriesResult, *, node_version: str = __version__) -> list[str]:
    """The label burned into every overlay: decision, class probabilities, model, disclaimer.
    ASCII only (the default font and the SC must not depend on a character set)."""
    decision = codes.DECISION_NAMES.get(result.decision, result.decision)
    if result.decision in result.probabilities:
        head = f"AI: {decision} p={result.probabilities[result.decision]:.2f}"
    else:
        head = f"AI: {decision}"
    probs = " ".join(f"{codes.CLASS_SHORT_NAMES.get(c, c)} {result.probabilities.get(c, 0.0):.2f}" for c in CLASSES)
    return [head, probs, f"{result.model.name} {result.model.version} / node {node_version}", "NOT FOR DIAGNOSTIC USE"]


def to_png(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(
    hu_slice: np.ndarray,
    heat_slice: np.ndarray | None,
    lines: Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> bytes:
    """:func:`render_overlay` as PNG bytes."""
    return to_png(render_overlay(hu_slice, heat_slice, lines, threshold=threshold))


def preview_png(result: SeriesResult, hu: np.ndarray, index: int, *, threshold: float = DEFAULT_THRESHOLD) -> bytes:
    """The admin preview of slice ``index`` (0-based, in the result's slice order): the same
    picture the SC series carries for that slice."""
    if not 0 <= index < hu.shape[0]:
        raise ValueError(f"slice index {index} is outside 0-{hu.shape[0] - 1}")
    heat = None if result.heatmap is None else result.heatmap[index]
    return overlay_png(hu[index], heat, label_lines(result), threshold=threshold)
