"""Outlines on one slice for the SR's spatial coordinates (SCOORD, PS3.3 C.18.6): image
coordinates are (column, row) with (0, 0) the top-left corner of the top-left pixel, so a pixel
centre is at +0.5. Every outline is a closed POLYLINE (its last point equals its first).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import measure


def key_slice(mask: np.ndarray) -> int:
    """The slice (axis 0) with the most voxels of ``mask``; the first of equals."""
    counts = np.asarray(mask, dtype=bool).reshape(mask.shape[0], -1).sum(axis=1)
    if not counts.any():
        raise ValueError("the mask is empty: no slice to outline")
    return int(np.argmax(counts))


def outline(mask: np.ndarray) -> np.ndarray:
    """The outline of the largest connected part of a 2-D mask: a closed polygon along the pixel
    edges' midpoints (the 0.5 iso-line), (column, row) in image coordinates, float32 (N, 2)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("outline needs a non-empty 2-D mask")
    labels = measure.label(mask, connectivity=1)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    padded = np.pad(labels == largest, 1).astype(np.float32)
    contour = max(measure.find_contours(padded, 0.5), key=len)  # (row, column), padded by one pixel
    contour = measure.approximate_polygon(contour, tolerance=0.25)
    points = contour[:, ::-1] - 1.0 + 0.5
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points.astype(np.float32)


def inner_point(mask: np.ndarray) -> np.ndarray:
    """The point of a 2-D mask farthest from its edge (the centre of the pixel deepest inside the
    largest connected part; the first of equals), (column, row) in image coordinates, float32 (1, 2)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("inner_point needs a non-empty 2-D mask")
    labels = measure.label(mask, connectivity=1)
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    depth = ndimage.distance_transform_edt(np.pad(labels == largest, 1))[1:-1, 1:-1]
    row, column = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.array([[column + 0.5, row + 0.5]], dtype=np.float32)


def box(mask: np.ndarray) -> np.ndarray:
    """The bounding rectangle of a 2-D mask (all of the image when it is empty) as a closed
    POLYLINE along the outer pixel edges, (column, row), float32 (5, 2)."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = (
        np.nonzero(mask) if mask.any() else (np.array([0, mask.shape[0] - 1]), np.array([0, mask.shape[1] - 1]))
    )
    c0, c1, r0, r1 = float(cols.min()), float(cols.max()) + 1.0, float(rows.min()), float(rows.max()) + 1.0
    return np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=np.float32)


def polygon_area(points: np.ndarray, spacing: tuple[float, float]) -> float:
    """Area in mm² of a closed (column, row) polygon; ``spacing`` is Pixel Spacing (row spacing,
    column spacing) in mm."""
    x = np.asarray(points[:, 0], dtype=np.float64) * spacing[1]
    y = np.asarray(points[:, 1], dtype=np.float64) * spacing[0]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
