"""The seam between a model and everything that runs one: the interface a predictor implements
(:class:`SeriesPredictor`) and the registry of model kinds (:data:`MODEL_KINDS`).

A weights folder's metadata.json names its kind (``"kind"``); :func:`load_predictor` reads it and
hands the folder to the loader registered for that kind. The node (dicom_node.pipeline) and the
command line load predictors only here and use only what :class:`SeriesPredictor` declares, so a
second model (a 3D network, say) is a new module in this package with a predictor and a loader,
plus one line in :data:`MODEL_KINDS`; the pipeline does not change. Weights written before the
metadata named a kind are the only kind that existed then, multiscale-cam-2d.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from model.contract.result import ModelInfo, SeriesResult
from model.inference import multiscale_cam
from model.inference.io import Volume
from model.inference.options import InferenceOptions
from model.inference.weights import MULTISCALE_CAM_2D, WeightsError, read_metadata, weights_folder


class SeriesPredictor(Protocol):
    """What the node asks of a model: who it is, and a result for a series."""

    @property
    def info(self) -> ModelInfo:
        """Name, version, classes and the weights' sha256 (the SR's device identity)."""

    def predict(self, source: Path | str | Volume) -> SeriesResult:
        """The result for one series (a folder of its files, or a volume already read); a series
        that can not be analysed gives ``no_decision`` with the reason, not an exception."""


# (weights folder, options) -> a predictor with the weights loaded.
Loader = Callable[[Path, InferenceOptions], SeriesPredictor]

MODEL_KINDS: dict[str, Loader] = {
    MULTISCALE_CAM_2D: multiscale_cam.load,
}


def load_predictor(weights_dir: Path | str | None = None, options: InferenceOptions | None = None) -> SeriesPredictor:
    """The predictor of the weights in ``weights_dir`` (None: the shipped weights), by their kind."""
    folder = weights_folder(weights_dir)
    kind = str(read_metadata(folder).get("kind", MULTISCALE_CAM_2D))
    loader = MODEL_KINDS.get(kind)
    if loader is None:
        raise WeightsError(f"{folder}: no model of kind {kind!r} is known (known: {', '.join(MODEL_KINDS)})")
    return loader(folder, options or InferenceOptions())
