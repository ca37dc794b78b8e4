"""The predict path: from a (compressed) DICOM series or a Volume to a complete SeriesResult.

Covers model/inference/multiscale_cam.py and model/inference/weights.py with a tiny network
(random weights, its covid head biased so the decision is known): every SeriesResult field and its geometry, the series
aggregation rules, the no_decision paths, weights metadata and caching, the shipped weights'
metadata. Not covered here: the quality of the shipped weights (``dicom-node model evaluate``;
metadata.json records it) and the localisation maths (test_localise.py).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.contract.result import CLASSES
from model.inference import multiscale_cam, series_rule
from model.inference.io import load_series
from model.inference.kinds import MODEL_KINDS, load_predictor
from model.inference.localise import LocalisationSettings
from model.inference.multiscale_cam import Predictor, settings_for
from model.inference.network import CamHead, WeaklySupervisedNet
from model.inference.options import InferenceOptions
from model.inference.preprocess import InputSpec
from model.inference.series_rule import PredictorSettings, aggregate_series
from model.inference.weights import (
    MULTISCALE_CAM_2D,
    SHIPPED_WEIGHTS_DIR,
    WeightsError,
    load_weights,
    read_metadata,
    save_weights,
    sha256_file,
    update_metadata,
    weights_folder,
)
from model.phantoms.phantom import Phantom
from model.phantoms.writer import write_phantom_series
from model.training.folder import default_metadata
from model.training.train import TrainConfig

TINY: dict[str, Any] = {"widths": (4, 8, 8, 16, 16), "depths": (1, 1, 1, 1, 1)}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 64-pixel network whose covid head is biased upwards (decision: covid)."""
    torch.manual_seed(0)
    net = WeaklySupervisedNet(**TINY)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(8, 1, 64, 64))
        for head in net.heads:
            assert isinstance(head, CamHead)
            head.bn.bias[0] += 5.0
    out = tmp_path_factory.mktemp("weights") / "tiny"
    meta = default_metadata(
        TrainConfig(input=InputSpec(height=64, width=64), **TINY), name="tiny-test", version="0.0.1"
    )
    meta["inference"]["localisation"] = {"mode": "cam+ig", "ig_slices": 2, "threshold": 0.6}
    save_weights(net.eval(), out, meta)
    return out


@pytest.fixture(scope="module")
def rle_series(tmp_path_factory: pytest.TempPathFactory, small_phantoms: dict[str, Phantom]) -> Path:
    """The covid phantom as an RLE Lossless series, signed, instance numbers feet -> head."""
    out = tmp_path_factory.mktemp("rle") / "series"
    return write_phantom_series(
        small_phantoms["covid"], out, transfer_syntax="rle", signed=True, reverse_instance_numbers=False
    )


@pytest.mark.slow
def test_predict_compressed_series_fills_every_field(
    tiny_weights: Path, rle_series: Path, small_phantoms: dict[str, Phantom]
) -> None:
    predictor = Predictor(load_weights(tiny_weights), settings_for(tiny_weights))
    assert predictor.settings.localisation.ig_slices == 2 and predictor.settings.localisation.threshold == 0.6
    result = predictor.predict(rle_series)
    shape = small_phantoms["covid"].shape
    assert result.decision == "covid" and "Not for clinical use" in result.reason
    assert set(result.probabilities) == set(CLASSES) and sum(result.probabilities.values()) == pytest.approx(1.0)
    assert result.heatmap is not None and result.heatmap.shape == shape and result.heatmap.dtype == np.float32
    assert float(result.heatmap.min()) >= 0.0 and float(result.heatmap.max()) == pytest.approx(1.0)
    assert result.lung_mask is not None and result.lung_mask.shape == shape and result.lung_mask.dtype == bool
    assert not result.heatmap[~result.lung_mask].any()  # restricted to the lungs
    assert (
        result.region_labels is not None
        and result.region_labels.dtype == np.uint16
        and result.region_labels.shape == shape
    )
    assert not result.region_labels[~result.lung_mask].any()
    assert len(result.sop_instance_uids) == shape[0] == len(set(result.sop_instance_uids)) == len(result.lung_slices)
    assert result.regions and [r.index for r in result.regions] == list(range(1, len(result.regions) + 1))
    for region in result.regions:
        assert int((result.region_labels == region.index).sum()) > 0
        z0, y0, x0, z1, y1, x1 = region.bbox
        assert region.slice_range == (z0, z1) and z0 <= region.peak[0] <= z1
        assert result.heatmap[region.peak] == pytest.approx(region.max_score)
        assert region.max_score >= 0.6 and region.volume_ml > 0
    lung_ml = result.lung_mask.sum()
    assert result.lung_involvement_percent == pytest.approx(100.0 * (result.region_labels > 0).sum() / lung_ml)
    assert result.key_slices and all(result.lung_slices[k] for k in result.key_slices)
    assert {"read", "lungs", "network", "cam", "ig", "regions", "total"} <= set(result.timings)
    info = result.model
    assert (
        info.name == "tiny-test"
        and info.version == "0.0.1"
        and info.weights_sha256 == sha256_file(tiny_weights / "model.safetensors")
    )
    doc = json.loads(json.dumps(result.to_json()))
    assert {"probabilities", "decision", "reason", "regions", "lung_involvement_percent", "model", "notice"} <= set(doc)
    # The same phantom, loaded first, gives the same result; CAM-only is a setting.
    volume = load_series(rle_series)
    cam_only = Predictor(
        load_weights(tiny_weights),
        dataclasses.replace(predictor.settings, localisation=LocalisationSettings(mode="cam", threshold=0.6)),
    ).predict(volume)
    assert cam_only.probabilities == pytest.approx(result.probabilities)
    assert "ig" not in cam_only.timings and cam_only.heatmap is not None and cam_only.heatmap.shape == shape


def test_heatmap_lines_up_with_slices(tiny_weights: Path, covid_series: Path) -> None:
    """Instance numbers head -> feet and shuffled names: the map follows the sorted slices."""
    predictor = Predictor(load_weights(tiny_weights), settings_for(tiny_weights, InferenceOptions(localisation="cam")))
    result = predictor.predict(covid_series)
    volume = load_series(covid_series)
    assert result.sop_instance_uids == volume.sop_instance_uids
    lung_rows = [i for i, v in enumerate(result.lung_slices) if v]
    assert result.heatmap is not None and all(
        result.heatmap[i].max() == 0 for i in range(len(result.lung_slices)) if i not in lung_rows
    )


def test_no_decision_paths(tiny_weights: Path, rle_series: Path, tmp_path: Path) -> None:
    predictor = Predictor(load_weights(tiny_weights), settings_for(tiny_weights, InferenceOptions(localisation="cam")))
    (tmp_path / "junk.txt").write_text("not DICOM")
    unreadable = predictor.predict(tmp_path)
    assert unreadable.decision == "no_decision" and "could not be read" in unreadable.reason
    assert unreadable.probabilities == pytest.approx({c: 1 / 3 for c in CLASSES}) and unreadable.heatmap is None

    volume = load_series(rle_series)
    mr = predictor.predict(dataclasses.replace(volume, modality="MR"))
    assert (
        mr.decision == "no_decision" and "modality MR" in mr.reason and len(mr.sop_instance_uids) == volume.hu.shape[0]
    )

    soft = predictor.predict(dataclasses.replace(volume, hu=np.full_like(volume.hu, 40.0)))
    assert soft.decision == "no_decision" and "no lungs" in soft.reason

    strict = Predictor(load_weights(tiny_weights), dataclasses.replace(predictor.settings, min_lung_slices=10_000))
    few = strict.predict(volume)
    assert few.decision == "no_decision" and "too few lung slices" in few.reason and any(few.lung_slices)
    assert json.loads(json.dumps(few.to_json()))["decision"] == "no_decision"


def test_aggregation_rules_by_hand() -> None:
    classes = ("covid", "cap", "normal")
    top_k, mean = (
        PredictorSettings(aggregation="top_k", top_k_fraction=0.1, top_k_min=3),
        PredictorSettings(aggregation="mean"),
    )
    logits = np.array([[0.0, 0.0, 5.0]] * 7 + [[6.0, 0.0, 0.0]] * 3, dtype=np.float32)
    probs, used = aggregate_series(logits, classes, top_k)
    assert sorted(used.tolist()) == [7, 8, 9] and int(np.argmax(probs)) == 0
    probs_mean, used_mean = aggregate_series(logits, classes, mean)
    assert len(used_mean) == 10
    expected = np.exp([1.8, 0.0, 3.5]) / np.exp([1.8, 0.0, 3.5]).sum()
    assert probs_mean == pytest.approx(expected, rel=1e-5)
    # k grows with the number of lung slices: ceil(0.1 * 50) = 5.
    _, used50 = aggregate_series(np.zeros((50, 3), dtype=np.float32), classes, top_k)
    assert len(used50) == 5
    # A model without a normal class ranks slices by its top probability.
    one = dataclasses.replace(top_k, top_k_min=1)
    _, used_bin = aggregate_series(np.array([[0.0, 0.1], [3.0, 0.0], [0.0, 0.0]]), ("covid", "cap"), one)
    assert used_bin.tolist() == [1]
    with pytest.raises(ValueError):
        aggregate_series(np.zeros((0, 3)), classes)
    with pytest.raises(ValueError):
        PredictorSettings(aggregation="median")
    with pytest.raises(ValueError):
        PredictorSettings(temperature=0.0)
    # A class bias is added to the series logits, the sum divided by the temperature, then softmax.
    biased, _ = aggregate_series(logits, classes, dataclasses.replace(mean, class_bias=(0.0, 2.0, -1.0)))
    expected = np.exp([1.8, 2.0, 2.5]) / np.exp([1.8, 2.0, 2.5]).sum()
    assert biased == pytest.approx(expected, rel=1e-5)
    cooled, _ = aggregate_series(
        logits, classes, dataclasses.replace(mean, class_bias=(0.0, 2.0, -1.0), temperature=2.0)
    )
    expected = np.exp([0.9, 1.0, 1.25]) / np.exp([0.9, 1.0, 1.25]).sum()
    assert cooled == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="one value per class"):
        aggregate_series(logits, classes, dataclasses.replace(mean, class_bias=(1.0,)))


def test_unknown_inference_settings_are_refused(tiny_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    update_metadata(folder, {"inference": read_metadata(folder)["inference"] | {"top_k_fractoin": 0.2}})
    with pytest.raises(WeightsError, match="top_k_fractoin"):
        settings_for(folder)
    inference = read_metadata(tiny_weights)["inference"]
    loc = inference["localisation"] | {"treshold": 0.3}
    update_metadata(folder, {"inference": inference | {"localisation": loc}})
    with pytest.raises(WeightsError, match="localisation.treshold"):
        settings_for(folder)


def test_weights_metadata_checks(tiny_weights: Path, tmp_path: Path) -> None:
    meta = read_metadata(tiny_weights)
    assert (
        meta["classes"] == list(CLASSES)
        and meta["input"]["height"] == 64
        and "not for clinical use" in meta["notice"].lower()
    )
    assert meta["kind"] == MULTISCALE_CAM_2D
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text(json.dumps(dict(meta, weights_sha256="0" * 64)))
    (broken / "model.safetensors").write_bytes((tiny_weights / "model.safetensors").read_bytes())
    with pytest.raises(WeightsError, match="sha256"):
        load_weights(broken)
    with pytest.raises(WeightsError):
        read_metadata(tmp_path)


def test_half_precision_weights_load_as_float32(tiny_weights: Path, tmp_path: Path) -> None:
    model = load_weights(tiny_weights)
    meta = {k: v for k, v in model.metadata.items() if k not in ("weights_sha256", "architecture")}
    save_weights(model.network, tmp_path / "half", meta, half=True)
    half = load_weights(tmp_path / "half")
    assert half.metadata["weights_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in half.network.parameters())


def test_predictors_are_loaded_by_the_kind_their_weights_name(tiny_weights: Path, tmp_path: Path) -> None:
    predictor = load_predictor(tiny_weights, InferenceOptions(localisation="cam"))
    assert isinstance(predictor, Predictor) and predictor.settings.localisation.mode == "cam"
    assert predictor.info == load_weights(tiny_weights).info
    assert MODEL_KINDS[MULTISCALE_CAM_2D] is multiscale_cam.load
    # Weights from before the metadata named a kind are multiscale-cam-2d.
    older = tmp_path / "older"
    shutil.copytree(tiny_weights, older)
    meta = read_metadata(older)
    del meta["kind"]
    (older / "metadata.json").write_text(json.dumps(meta))
    assert isinstance(load_predictor(older), Predictor)
    meta["kind"] = "transformer-3d"
    (older / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="no model of kind 'transformer-3d'"):
        load_predictor(older)
    with pytest.raises(WeightsError, match="not 'multiscale-cam-2d'"):
        load_weights(older)


def test_no_folder_means_the_shipped_weights() -> None:
    assert weights_folder(None) == SHIPPED_WEIGHTS_DIR and (SHIPPED_WEIGHTS_DIR / "model.safetensors").is_file()
    assert read_metadata(weights_folder(None))["kind"] == MULTISCALE_CAM_2D


def test_decide_is_indeterminate_below_the_margin_and_says_why() -> None:
    classes = ("covid", "cap", "normal")
    assert series_rule.decide([0.6, 0.3, 0.1], classes, 0.1) == ("covid", None)
    decision, why = series_rule.decide([0.342, 0.323, 0.335], classes, 0.1)
    assert decision == "indeterminate" and why is not None
    assert "p(covid)=0.342 against p(normal)=0.335" in why and "margin of 0.007 below the 0.100" in why
    assert series_rule.decide([0.342, 0.323, 0.335], classes, 0.0) == ("covid", None)  # 0: always decide
    with pytest.raises(ValueError, match="min_margin"):
        PredictorSettings(min_margin=1.0)
    # The heatmap shows the likelier disease whatever the decision.
    assert multiscale_cam.localisation_target(np.array([0.1, 0.2, 0.7]), classes) == 1
    assert multiscale_cam.localisation_target(np.array([0.5, 0.5]), ("covid", "normal")) == 0


def test_an_indeterminate_series_gets_no_regions(tiny_weights: Path, covid_series: Path) -> None:
    settings = dataclasses.replace(settings_for(tiny_weights), min_margin=0.99, class_bias=())
    result = Predictor(load_weights(tiny_weights), settings).predict(covid_series)
    assert result.decision == "indeterminate" and result.reason.startswith("indeterminate, low confidence")
    assert result.regions == [] and result.lung_involvement_percent == 0.0 and result.heatmap is not None
    assert "not for clinical use" in result.reason.lower()


def test_auto_localisation_is_cam_on_a_cpu_and_cam_ig_on_a_gpu() -> None:
    auto = LocalisationSettings(mode="auto")
    assert auto.resolved("cpu").mode == "cam" and auto.resolved("cuda:0").mode == "cam+ig"
    assert LocalisationSettings(mode="cam+ig").resolved("cpu").mode == "cam+ig"  # asked for: kept
