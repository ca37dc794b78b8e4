"""What one worker process keeps between jobs (:class:`Runtime`): settings, its database engine,
its name, its device, the node's files over the network when it runs on another host
(dicom_node.pipeline.remote) and the predictor, loaded once.

Whoever runs the work builds one Runtime per process (the Celery adapter: worker.tasks) and passes
it to :func:`dicom_node.pipeline.analyse.analyse` and :func:`dicom_node.pipeline.export.export_job`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import torch

from dicom_node.db import Database
from dicom_node.pipeline.remote import NodeFiles
from dicom_node.settings import Settings
from model.inference.kinds import SeriesPredictor, load_predictor
from model.inference.options import InferenceOptions


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def resolve_device(device: str, index: int = 0) -> str:
    """ "cpu", or "cuda:N" for worker process ``index`` (processes spread over the GPUs)."""
    if device == "cpu":
        return "cpu"
    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("worker.device is cuda but no CUDA device is available")
    return f"cuda:{index % torch.cuda.device_count()}"


@dataclass
class Runtime:
    """What one worker process keeps between jobs: settings, its database engine, its name and
    the predictor (loaded on first use, then cached for the life of the process)."""

    settings: Settings
    db: Database
    device: str = "cpu"
    worker_name: str = field(default_factory=default_worker_name)
    # The node's files over the network (remote.node_url set): a worker on another host.
    remote: NodeFiles | None = None
    _predictor: SeriesPredictor | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        device: str | None = None,
        worker_name: str | None = None,
        predictor: SeriesPredictor | None = None,
    ) -> "Runtime":
        """``predictor``: one already loaded (tests stand a hand-made one in); by default the
        weights of the settings are loaded on first use."""
        return cls(
            settings=settings,
            db=Database(settings.effective_database_url),
            device=device or resolve_device(settings.worker.device),
            worker_name=worker_name or default_worker_name(),
            remote=NodeFiles(settings) if settings.remote.node_url else None,
            _predictor=predictor,
        )

    @property
    def predictor_loaded(self) -> bool:
        return self._predictor is not None

    def predictor(self) -> SeriesPredictor:
        """This process's predictor: the weights of ``worker.weights_dir`` (model.inference.kinds
        picks the model by the kind their metadata names) on this process's device, loaded on
        first use and kept for the life of the process."""
        if self._predictor is None:
            options = InferenceOptions(device=self.device, localisation=self.settings.worker.localisation)
            self._predictor = load_predictor(self.settings.worker.weights_dir, options)
        return self._predictor

    @property
    def stale_after(self) -> float:
        """A running job's heartbeat older than this means its worker is gone."""
        return 3 * self.settings.worker.heartbeat_seconds


def release_memory() -> None:
    """Collect garbage and return the C heap's free pages to the system (glibc's malloc_trim):
    after a job of a thin-slice series its freed arrays would otherwise leave the worker's
    resident set hundreds of MB above an idle one's, growing from job to job with
    fragmentation. Elsewhere than glibc, only the collection."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None
