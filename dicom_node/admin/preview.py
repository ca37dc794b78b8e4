"""A finished job's heatmap pictures as PNG, for the admin pages and the REST API.

The picture is the secondary capture the worker wrote for the job (an RGB picture of the slice
with the heatmap burned in), turned into PNG: the admin sees exactly what PACS receives.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import convert_color_space

from dicom_node.db import Database
from dicom_node.db.models import Job
from dicom_node.errors import NotFound
from dicom_node.outputs.kinds import PREVIEW_KIND


def _sc_path(results_dir: Path, job_id: int, output: dict[str, Any]) -> Path:
    """The file of one output entry: Job.outputs paths are relative to the results dir
    (``<job id>/dicom/sc/<uid>.dcm``, see dicom_node.storage.results). Never a path outside results_dir."""
    raw = Path(str(output.get("path", "")))
    root = results_dir.resolve()
    candidates = [raw] if raw.is_absolute() else [results_dir / raw]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_relative_to(root) and resolved.is_file():
            return resolved
    raise NotFound(f"the picture {raw} of job {job_id} is not in {results_dir}")


def rgb_png(ds: pydicom.Dataset) -> bytes:
    """PNG of a secondary capture's pixels (RGB, or monochrome shown as grey)."""
    pixels = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric.startswith("YBR"):
        pixels = convert_color_space(pixels, photometric, "RGB")
    if pixels.ndim == 4:  # multi-frame: the first frame
        pixels = pixels[0]
    elif pixels.ndim == 3 and photometric.startswith("MONOCHROME"):
        pixels = pixels[0]
    if pixels.dtype != np.uint8:
        lo, hi = float(pixels.min()), float(pixels.max())
        pixels = np.rint((pixels.astype(np.float32) - lo) / max(1.0, hi - lo) * 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def job_picture_png(db: Database, results_dir: Path, job_id: int, index: int = 0) -> bytes:
    """The ``index``-th secondary capture (heatmap overlay) of a finished job as PNG."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        pictures = [o for o in job.outputs or [] if isinstance(o, dict) and o.get("kind") == PREVIEW_KIND]
    if not pictures:
        raise NotFound(f"job {job_id} has no heatmap pictures")
    if not 0 <= index < len(pictures):
        raise NotFound(f"job {job_id} has {len(pictures)} heatmap picture(s); there is no number {index}")
    return rgb_png(pydicom.dcmread(_sc_path(results_dir, job_id, pictures[index])))
