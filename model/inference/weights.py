"""Saving and loading model weights with their metadata (a MONAI-style model folder).

A weights folder holds ``model.safetensors`` (the network's state dict) and ``metadata.json``: the model kind
(model.inference.kinds), name, version, classes, architecture, input spec, aggregation rule, training data and
configuration, held-out metrics, the sha256 of the weights file and "not for clinical use". Beside them,
``lungs.safetensors`` holds the lung network (model.inference.lungnet), described by the metadata's ``lungs``
(written first to ``lungs.json`` by ``dicom-node model train-lungs``, merged into the metadata when the
classifier is saved); weights without it segment the lungs by threshold (model.inference.lung).
:func:`weights_folder` is the one place that says which folder "no folder" means: the weights shipped in
model/weights/.

Nothing here caches: whoever keeps a predictor (a worker process: dicom_node.pipeline.runtime)
loads it once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.contract.notice import WEIGHTS_NOTICE
from model.contract.result import CLASSES, ModelInfo
from model.inference.lungnet import GridSpec, LungSegmenter, build_lung_net
from model.inference.network import WeaklySupervisedNet
from model.inference.preprocess import InputSpec

WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
LUNGS_FILE = "lungs.safetensors"
LUNGS_METADATA_FILE = "lungs.json"
SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
# The kind of the weights this module writes and reads: the 2D multi-scale CAM network of
# model.inference.network with the series rule of model.inference.multiscale_cam.
MULTISCALE_CAM_2D = "multiscale-cam-2d"


class WeightsError(ValueError):
    """A weights folder that is missing, incomplete or inconsistent with its metadata."""


@dataclass
class LoadedModel:
    """A network ready for inference, with the metadata it was saved with."""

    network: WeaklySupervisedNet
    metadata: dict[str, Any]
    device: torch.device
    weights_dir: Path
    lungs: LungSegmenter | None = None  # None: the threshold method (model.inference.lung)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.metadata["classes"])

    @property
    def input_spec(self) -> InputSpec:
        """The pre-processing the network was trained with (its metadata's ``input``)."""
        return InputSpec.from_json(self.metadata["input"])

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name=str(self.metadata["name"]),
            version=str(self.metadata["version"]),
            classes=self.classes,
            weights_sha256=str(self.metadata.get("weights_sha256", "")),
        )


def weights_folder(weights_dir: Path | str | None) -> Path:
    """The weights folder to use: ``weights_dir``, or the shipped weights when it is None."""
    return Path(weights_dir).resolve() if weights_dir is not None else SHIPPED_WEIGHTS_DIR


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_classes(classes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Classes must be distinct names from :data:`model.contract.result.CLASSES`, at least two."""
    out = tuple(classes)
    if len(out) < 2 or len(set(out)) != len(out) or any(c not in CLASSES for c in out):
        raise ValueError(f"classes must be two or three distinct names from {CLASSES}, got {out!r}")
    return out


def save_weights(network: WeaklySupervisedNet, out_dir: Path, metadata: dict[str, Any], half: bool = False) -> Path:
    """Write the state dict and the metadata (with architecture and sha256 added) to ``out_dir``.

    ``half`` stores float tensors as float16 (halves the size; loading casts back to float32).
    Returns the weights file path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = validate_classes(metadata["classes"])
    if len(classes) != network.num_classes:
        raise WeightsError(f"metadata names {len(classes)} classes, the network has {network.num_classes}")
    state = {}
    for key, value in network.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor
    weights_path = out_dir / WEIGHTS_FILE
    save_file(state, str(weights_path), metadata={"format": "pt"})
    meta = {"kind": MULTISCALE_CAM_2D, **metadata}
    meta["architecture"] = network.architecture()
    meta["weights_file"] = WEIGHTS_FILE
    meta["weights_dtype"] = "float16" if half else "float32"
    meta["weights_sha256"] = sha256_file(weights_path)
    meta.setdefault("notice", WEIGHTS_NOTICE)
    lungs = out_dir / LUNGS_METADATA_FILE
    if lungs.is_file() and "lungs" not in meta:
        meta["lungs"] = json.loads(lungs.read_text())
    (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return weights_path


def save_lung_weights(state: dict[str, torch.Tensor], out_dir: Path, description: dict[str, Any]) -> Path:
    """Write the lung network's state dict and its description (``lungs.json``, with the sha256),
    which :func:`save_weights` merges into the metadata; an existing metadata.json gets it at once."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LUNGS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
    desc = dict(description) | {"weights_file": LUNGS_FILE, "weights_sha256": sha256_file(path)}
    (out_dir / LUNGS_METADATA_FILE).write_text(json.dumps(desc, indent=2) + "\n")
    if (out_dir / METADATA_FILE).is_file():
        meta = json.loads((out_dir / METADATA_FILE).read_text())
        meta["lungs"] = desc
        (out_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_lung_segmenter(weights_dir: Path | str, device: str | torch.device = "cpu") -> LungSegmenter | None:
    """The lung network of a weights folder (from its metadata's ``lungs``, else ``lungs.json``),
    checked against its sha256; None when the folder has none."""
    weights_dir = Path(weights_dir)
    meta_path = weights_dir / METADATA_FILE
    desc = json.loads(meta_path.read_text()).get("lungs") if meta_path.is_file() else None
    if desc is None and (weights_dir / LUNGS_METADATA_FILE).is_file():
        desc = json.loads((weights_dir / LUNGS_METADATA_FILE).read_text())
    if desc is None:
        return None
    path = weights_dir / str(desc.get("weights_file", LUNGS_FILE))
    if not path.is_file():
        raise WeightsError(f"{path} not found")
    if desc.get("weights_sha256") and sha256_file(path) != desc["weights_sha256"]:
        raise WeightsError(f"{path}: sha256 differs from its metadata")
    try:
        grid = GridSpec.from_description(desc)
    except ValueError as exc:
        raise WeightsError(f"{weights_dir}: the lung network's working grid: {exc}") from None
    network = build_lung_net(tuple(desc["channels"]))
    network.load_state_dict(load_file(str(path)), strict=True)
    return LungSegmenter(network, device, grid=grid)


def read_metadata(weights_dir: Path) -> dict[str, Any]:
    """The metadata of a weights folder, checked for the keys inference needs."""
    path = Path(weights_dir) / METADATA_FILE
    if not path.is_file():
        raise WeightsError(f"{path} not found")
    meta = json.loads(path.read_text())
    for key in ("name", "version", "classes", "input", "architecture"):
        if key not in meta:
            raise WeightsError(f"{path} lacks {key!r}")
    validate_classes(meta["classes"])
    return meta


def update_metadata(weights_dir: Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Set top-level keys of a weights folder's metadata (metrics, chosen inference settings).

    The weights file and its sha256 are untouched. Returns the new metadata.
    """
    meta = read_metadata(weights_dir)
    for key in ("weights_sha256", "weights_file", "architecture"):
        if key in updates:
            raise ValueError(f"{key!r} describes the weights file and cannot be updated")
    meta.update(updates)
    (Path(weights_dir) / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def build_network(metadata: dict[str, Any]) -> WeaklySupervisedNet:
    """An untrained network with the architecture recorded in the metadata."""
    arch = metadata["architecture"]
    return WeaklySupervisedNet(
        num_classes=int(arch["num_classes"]),
        in_channels=int(arch["in_channels"]),
        widths=tuple(arch["widths"]),
        depths=tuple(arch["depths"]),
        head_blocks=tuple(arch["head_blocks"]),
        dropout=float(arch["dropout"]),
    )


def load_weights(weights_dir: Path | str | None, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a weights folder of kind multiscale-cam-2d (None: the shipped weights): the network in
    eval mode on ``device``.

    The sha256 in the metadata must match the file, so a result's model identity is the weights'.
    """
    weights_dir = weights_folder(weights_dir)
    meta = read_metadata(weights_dir)
    kind = meta.get("kind", MULTISCALE_CAM_2D)
    if kind != MULTISCALE_CAM_2D:
        raise WeightsError(f"{weights_dir} holds weights of kind {kind!r}, not {MULTISCALE_CAM_2D!r}")
    weights_path = weights_dir / meta.get("weights_file", WEIGHTS_FILE)
    if not weights_path.is_file():
        raise WeightsError(f"{weights_path} not found")
    actual = sha256_file(weights_path)
    expected = meta.get("weights_sha256")
    if expected and expected != actual:
        raise WeightsError(f"{weights_path}: sha256 {actual} differs from metadata {expected}")
    meta["weights_sha256"] = actual
    network = build_network(meta)
    state = load_file(str(weights_path))
    reference = network.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    network.load_state_dict(state, strict=True)
    dev = torch.device(device)
    network.to(dev).eval()
    lungs = load_lung_segmenter(weights_dir, dev)
    return LoadedModel(network=network, metadata=meta, device=dev, weights_dir=weights_dir, lungs=lungs)
