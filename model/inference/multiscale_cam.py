"""From a series (a DICOM folder or a loaded volume) to a :class:`model.contract.result.SeriesResult`.

Pipeline: read (model.inference.io) -> lung mask (model.inference.lung) -> lung slices -> window, resize, z-score
(model.inference.preprocess) -> the network over batches of slices (torch.inference_mode; AMP and
channels_last on CUDA) -> the series decision -> localisation (model.inference.localise) in the original
geometry -> regions.

The series rule (documented in model/README.md, evaluated by ``dicom-node model evaluate``):
slice logits are the mean of the three scales' logits; slices are ranked by abnormality
(1 - p(normal) of the slice; for a model without a normal class, its top probability); the series
logits are the mean over the k most abnormal lung slices, k = max(top_k_min, ceil(top_k_fraction *
lung slices)), capped at the number of lung slices; softmax gives the series probabilities and the
decision is their argmax. The alternative rule "mean" averages the logits of all lung slices.

``no_decision`` (probabilities uniform over the model's classes, reason always set) when the series
cannot be read, is not CT, has no lungs (not a chest CT) or fewer than ``min_lung_slices`` lung
slices. Regions, lung involvement and key slices are reported for covid/cap decisions only; for a
normal decision the heatmap still shows where the evidence for the likelier abnormal class is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.contract.notice import NOT_FOR_CLINICAL_USE
from model.contract.result import ABNORMAL_CLASSES, ModelInfo, Region, SeriesResult
from model.inference import localise
from model.inference.io import SeriesReadError, Volume, check_chest_ct, load_series
from model.inference.localise import LocalisationSettings
from model.inference.lung import find_lungs_with_doubt
from model.inference.network import mixed_precision
from model.inference.options import InferenceOptions
from model.inference.preprocess import SliceGeometry, lung_slice_indices, prepare_lung_slices
from model.inference.series_rule import (
    CLASS_WORDS,
    PredictorSettings,
    aggregate_series,
    decide,
    full_probabilities,
    localisation_target,
    softmax,
)
from model.inference.weights import LoadedModel, WeightsError, load_weights, read_metadata, weights_folder


@dataclass
class SliceAnalysis:
    """The network's view of a series' lung slices (what evaluation needs beyond the result)."""

    lung_indices: np.ndarray  # (n,) the slices the network saw (slab centres), indices into the sorted slices
    logits: np.ndarray  # (n, classes) mean-over-scales logits
    cams: list[np.ndarray]  # per scale (n, classes, h_s, w_s) float32
    inputs: torch.Tensor  # (n, 1, height, width) pre-processed slices (CPU)
    geometry: SliceGeometry  # where the inputs lie in the series' slices
    lung_slices: np.ndarray | None = None  # every lung slice (the heatmap covers them all); None: lung_indices


class Predictor:
    """The predictor of kind multiscale-cam-2d (a model.inference.kinds.SeriesPredictor): weights
    loaded once; ``predict`` per series. Thread-compatible, not thread-safe."""

    def __init__(self, model: LoadedModel, settings: PredictorSettings | None = None) -> None:
        self.settings = settings or PredictorSettings()
        self.device = torch.device(self.settings.device)
        if model.device != self.device:
            raise ValueError(f"model loaded on {model.device}, settings ask for {self.device}")
        self.model = model
        self.network = model.network.eval()
        if self.device.type == "cuda":
            self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to(memory_format=...) is documented; torch's overloads omit it
        self.classes = model.classes
        self.input_spec = model.input_spec

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    # -- the network ------------------------------------------------------------------------------

    def _batch_to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def forward_slices(self, inputs: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
        """Mean logits (n, classes) and per-scale CAMs of pre-processed slices, in batches."""
        logits: list[np.ndarray] = []
        cams: list[list[np.ndarray]] = [[] for _ in self.network.heads]
        with torch.inference_mode():
            for start in range(0, inputs.shape[0], self.settings.batch_size):
                x = self._batch_to_device(inputs[start : start + self.settings.batch_size])
                with mixed_precision(self.device):
                    out = self.network(x)
                logits.append(out.mean_logits.float().cpu().numpy())
                for s, cam in enumerate(out.cams):
                    cams[s].append(cam.float().cpu().numpy())
        return np.concatenate(logits), [np.concatenate(c) for c in cams]

    def analyse_slices(
        self,
        hu: np.ndarray,
        lung_indices: np.ndarray,
        lung_mask: np.ndarray,
        pixel_spacing: tuple[float, float],
        slice_spacing: float = 0.0,
    ) -> SliceAnalysis:
        """Pre-process the lung slices as the weights' input spec says (slabs of thin slices) and run
        the network over them."""
        prepared = prepare_lung_slices(hu, lung_mask, self.input_spec, pixel_spacing, lung_indices, slice_spacing)
        inputs = torch.from_numpy(prepared.inputs)
        logits, cams = self.forward_slices(inputs)
        return SliceAnalysis(
            lung_indices=prepared.indices,
            logits=logits,
            cams=cams,
            inputs=inputs,
            geometry=prepared.geometry,
            lung_slices=np.asarray(lung_indices, dtype=np.int64),
        )

    # -- the series -------------------------------------------------------------------------------

    def predict(self, source: Path | str | Volume) -> SeriesResult:
        """The full result for one series; ``no_decision`` (with a reason) instead of errors for
        series that cannot be read or are not chest CT."""
        return self.predict_with_analysis(source)[0]

    def predict_with_analysis(self, source: Path | str | Volume) -> tuple[SeriesResult, SliceAnalysis | None]:
        """:meth:`predict` plus the slice-level analysis (None for an early no_decision)."""
        timings: dict[str, float] = {}
        t_total = time.perf_counter()
        t = time.perf_counter()
        if isinstance(source, (str, Path)):
            try:
                volume = load_series(Path(source))
            except SeriesReadError as exc:
                return self._no_decision(f"series could not be read: {exc}", timings, t_total), None
        else:
            volume = source
        timings["read"] = time.perf_counter() - t
        uids = [str(u) for u in volume.sop_instance_uids]
        chest_ok, why_not = check_chest_ct(volume)
        if not chest_ok:
            return self._no_decision(why_not, timings, t_total, uids), None

        hu = volume.hu
        sz, sy, sx = (float(s) for s in volume.spacing)
        spacing = (sz, sy, sx)
        t = time.perf_counter()
        lung_mask, doubtful = find_lungs_with_doubt(
            hu,
            spacing,
            superior_last=volume.superior_last,
            segmenter=self.model.lungs,
            doubt_below=self.settings.localisation.region_lung_probability,
        )
        lung_indices = np.asarray(lung_slice_indices(lung_mask), dtype=np.int64)
        timings["lungs"] = time.perf_counter() - t
        lung_slices = [False] * hu.shape[0]
        for i in lung_indices:
            lung_slices[int(i)] = True
        lung_ml = float(np.count_nonzero(lung_mask)) * float(np.prod(spacing)) / 1000.0
        if lung_indices.size == 0 or lung_ml < self.settings.min_lung_volume_ml:
            return self._no_decision(
                f"no lungs found ({lung_ml:.0f} ml of lung): not a chest CT", timings, t_total, uids, lung_slices
            ), None
        if lung_indices.size < self.settings.min_lung_slices:
            reason = f"too few lung slices: {lung_indices.size} (minimum {self.settings.min_lung_slices})"
            return self._no_decision(reason, timings, t_total, uids, lung_slices), None

        t = time.perf_counter()
        analysis = self.analyse_slices(hu, lung_indices, lung_mask, (sy, sx), sz)
        timings["network"] = time.perf_counter() - t
        probs, used = aggregate_series(analysis.logits, self.classes, self.settings)
        decision, doubt = decide(probs, self.classes, self.settings.min_margin)
        target = localisation_target(probs, self.classes)
        seen = analysis.lung_indices.size
        unit = "lung slices" if seen == lung_indices.size else f"slabs of the {lung_indices.size} lung slices"
        rule = (
            f"mean logits of the {len(used)} most abnormal of {seen} {unit}"
            if self.settings.aggregation == "top_k"
            else f"mean logits of all {seen} {unit}"
        )
        if doubt is not None:
            reason = f"indeterminate, {doubt} ({rule}). {NOT_FOR_CLINICAL_USE}"
        else:
            reason = f"{CLASS_WORDS[decision]}: p={probs[int(np.argmax(probs))]:.3f} ({rule}). {NOT_FOR_CLINICAL_USE}"

        heatmap = self.heatmap(analysis, target, lung_mask, timings, hu)
        t = time.perf_counter()
        abnormal = decision in ABNORMAL_CLASSES
        if abnormal:
            region_labels, regions = self.regions(hu, heatmap, lung_mask, doubtful, spacing, decision)
            del doubtful
            involvement = localise.involvement_percent(region_labels, lung_mask)
            key = self._key_slices(analysis, target, region_labels)
        else:
            region_labels, regions, involvement, key = np.zeros(hu.shape, dtype=np.uint16), [], 0.0, []
        timings["regions"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_total
        result = SeriesResult(
            probabilities=full_probabilities(probs, self.classes),
            decision=decision,
            reason=reason,
            model=self.model.info,
            regions=regions,
            lung_involvement_percent=involvement,
            sop_instance_uids=uids,
            key_slices=key,
            lung_slices=lung_slices,
            heatmap=heatmap,
            region_labels=region_labels,
            lung_mask=lung_mask,
            timings=timings,
        )
        return result, analysis

    def regions(
        self,
        hu: np.ndarray,
        heatmap: np.ndarray,
        lung_mask: np.ndarray,
        doubtful: np.ndarray | None,
        spacing: tuple[float, float, float],
        decision: str,
    ) -> tuple[np.ndarray, list[Region]]:
        """The regions of a series' joint map for its ``decision``: thresholded inside the lungs but
        for the mask's ``doubtful`` voxels (LocalisationSettings.region_lung_probability: regions lie
        where the mask is sure of its dense tissue), grown through the solid consolidation and the
        fainter map they touch (localise.region_growth)."""
        loc = self.settings.localisation
        region_space = lung_mask & ~doubtful if doubtful is not None else lung_mask
        grow = localise.region_growth(hu, heatmap, region_space, spacing, loc, decision)
        return localise.find_regions(heatmap, region_space, spacing, loc.threshold, loc.min_volume_ml, grow_into=grow)

    def _no_decision(
        self,
        reason: str,
        timings: dict[str, float],
        t_total: float,
        uids: list[str] | None = None,
        lung_slices: list[bool] | None = None,
    ) -> SeriesResult:
        timings["total"] = time.perf_counter() - t_total
        uniform = np.full(len(self.classes), 1.0 / len(self.classes))
        return SeriesResult(
            probabilities=full_probabilities(uniform, self.classes),
            decision="no_decision",
            reason=f"no decision: {reason}. {NOT_FOR_CLINICAL_USE}",
            model=self.model.info,
            sop_instance_uids=uids or [],
            lung_slices=lung_slices or [],
            timings=timings,
        )

    def _key_slices(self, analysis: SliceAnalysis, target: int, region_labels: np.ndarray) -> list[int]:
        """Lung slices by the slice probability of the target class (ties: more region area)."""
        if self.settings.key_slices == 0:
            return []
        p = softmax(analysis.logits)[:, target]
        area = np.array([np.count_nonzero(region_labels[int(i)]) for i in analysis.lung_indices])
        order = np.lexsort((-area, -np.round(p, 3)))
        return [int(analysis.lung_indices[i]) for i in order[: self.settings.key_slices]]

    # -- localisation -----------------------------------------------------------------------------

    def heatmap(
        self,
        analysis: SliceAnalysis,
        target: int,
        lung_mask: np.ndarray,
        timings: dict[str, float] | None = None,
        hu: np.ndarray | None = None,
    ) -> np.ndarray:
        """The joint map of ``target`` in the series geometry: float32 [0, 1], zero outside lungs;
        weighted by the density excess of ``hu`` where the settings say so (module localise)."""
        settings = self.settings.localisation.resolved(self.settings.device)
        timings = timings if timings is not None else {}
        t = time.perf_counter()
        n = analysis.lung_indices.size
        # Series-normalised CAMs of the target class, per scale, at the network input size.
        peaks = [max(float(c[:, target].max()), 1e-12) for c in analysis.cams]
        factor: dict[int, torch.Tensor] = {}
        scale_level = torch.ones(len(peaks))
        timings["cam"] = time.perf_counter() - t
        if settings.mode == "cam+ig" and settings.ig_slices > 0:
            t = time.perf_counter()
            p = softmax(analysis.logits)[:, target]
            chosen = np.argsort(-p, kind="stable")[: min(settings.ig_slices, n)]
            lung_small = torch.from_numpy(analysis.geometry.mask_to_network(lung_mask[analysis.lung_indices[chosen]]))
            attr = self.integrated_gradients(analysis.inputs[chosen], target)
            f = localise.ig_factor(attr.cpu(), lung_small, settings.ig_sigma)  # (m, scales, S, S)
            cam_chosen = self._cams_at(analysis, chosen, target, peaks)
            # The CAM-weighted mean IG factor per scale: what an unexamined slice is scaled by.
            weight = cam_chosen * lung_small.unsqueeze(1)
            scale_level = (weight * f).sum(dim=(0, 2, 3)) / weight.sum(dim=(0, 2, 3)).clamp_min(1e-12)
            factor = {int(i): f[j] for j, i in enumerate(chosen)}
            timings["ig"] = time.perf_counter() - t
        t = time.perf_counter()
        joints = np.empty((n, self.input_spec.height, self.input_spec.width), dtype=np.float32)
        chunk = max(1, self.settings.batch_size)
        for start in range(0, n, chunk):
            idx = np.arange(start, min(n, start + chunk))
            m = self._cams_at(analysis, idx, target, peaks)
            for j, i in enumerate(idx):
                m[j] = m[j] * (factor[int(i)] if int(i) in factor else scale_level.view(-1, 1, 1))
            joints[idx] = localise.joint_map(m).numpy()
        # The map is 0 outside the lungs: it is worked out in the lungs' box only (a third of a
        # 512 x 512 slice, and only the slices from the first to the last lung slice), then placed
        # in a map of the series' size whose other pages np.zeros leaves unwritten (the kernel's
        # zero page: on a thin-slice series into the neck and abdomen, most of it).
        heat = np.zeros(lung_mask.shape, dtype=np.float32)
        box = localise.bounding_box(lung_mask)
        if box is None:
            return heat
        zs, ys, xs = box
        part_lungs = lung_mask[box]
        part_heat = np.zeros(part_lungs.shape, dtype=np.float32)
        slices = analysis.lung_slices if analysis.lung_slices is not None else analysis.lung_indices
        slices = slices[(slices >= zs.start) & (slices < zs.stop)]  # beyond them the lungs are not
        for start in range(0, slices.size, chunk):
            part = slices[start : start + chunk]
            mapped = analysis.geometry.to_original(between_slabs(joints, analysis.lung_indices, part))
            part_heat[part - zs.start] = mapped[:, ys, xs]
        localise.min_max(part_heat, part_lungs, inplace=True)
        if settings.density_weighting and hu is not None:
            if settings.cam_floor > 0:
                part_heat -= np.float32(settings.cam_floor)
                part_heat *= np.float32(1.0 / (1.0 - settings.cam_floor))
                np.clip(part_heat, 0.0, 1.0, out=part_heat)
            localise.weight_by_density(
                part_heat,
                hu[box],
                part_lungs,
                settings.density_offset_hu,
                settings.density_range_hu,
                settings.density_percentile,
                settings.density_peak_share,
                settings.density_peak_range_hu,
            )
            localise.min_max(part_heat, part_lungs, inplace=True)
        heat[box] = part_heat
        timings["cam"] += time.perf_counter() - t
        return heat

    def _cams_at(self, analysis: SliceAnalysis, idx: np.ndarray, target: int, peaks: list[float]) -> torch.Tensor:
        cams = [torch.from_numpy(c[idx, target]) / peak for c, peak in zip(analysis.cams, peaks)]
        return localise.upsample_cams(cams, (self.input_spec.height, self.input_spec.width)).clamp(0.0, 1.0)

    def integrated_gradients(self, inputs: torch.Tensor, target: int) -> torch.Tensor:
        """IG of each scale's pooled logit for ``target`` (batched over steps), outside inference mode."""
        settings = self.settings.localisation
        x = self._batch_to_device(inputs)
        targets = torch.full((x.shape[0],), target, dtype=torch.long, device=self.device)
        return localise.integrated_gradients(
            self.network, x, targets, settings.ig_steps, settings.ig_baseline, settings.ig_batch
        )


def between_slabs(maps: np.ndarray, centres: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """Maps of the network's slices (one per slab centre, ascending) at other ``slices``: linear
    between the two nearest centres, the nearest one beyond the ends."""
    if centres.size == 1:
        return np.repeat(maps[:1], slices.size, axis=0)
    pos = np.interp(slices.astype(np.float64), centres.astype(np.float64), np.arange(centres.size, dtype=np.float64))
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, centres.size - 1)
    w = (pos - lo).astype(np.float32)[:, None, None]
    return maps[lo] * (1.0 - w) + maps[hi] * w


# Keys of the weights' "inference" metadata that are records, not settings.
_INFERENCE_RECORDS = ("calibration",)


def settings_for(weights_dir: Path | str | None = None, options: InferenceOptions | None = None) -> PredictorSettings:
    """Settings from the weights' ``inference`` metadata (chosen on validation data when the
    weights were made), overridden by every option that is not None. A key the settings do not
    know is refused (WeightsError naming it): weights made for other code must not run silently
    with defaults in its place."""
    options = options or InferenceOptions()
    folder = weights_folder(weights_dir)
    meta = read_metadata(folder)
    rec = {k: v for k, v in meta.get("inference", {}).items() if k not in _INFERENCE_RECORDS}
    loc = dict(rec.pop("localisation", {}))
    known = {f for f in PredictorSettings.__dataclass_fields__ if f not in ("device", "batch_size", "localisation")}
    unknown = sorted(set(rec) - known) + sorted(
        f"localisation.{k}" for k in set(loc) - set(LocalisationSettings.__dataclass_fields__)
    )
    if unknown:
        raise WeightsError(f"{folder}: inference settings {', '.join(unknown)} are not known to this version")
    for key, value in (
        ("mode", options.localisation),
        ("ig_slices", options.ig_slices),
        ("threshold", options.threshold),
    ):
        if value is not None:
            loc[key] = value
    if options.aggregation is not None:
        rec["aggregation"] = options.aggregation
    if "class_bias" in rec:
        rec["class_bias"] = tuple(float(b) for b in rec["class_bias"])
    return PredictorSettings(
        device=options.device, batch_size=options.batch_size, localisation=LocalisationSettings(**loc), **rec
    )


def load(weights_dir: Path, options: InferenceOptions) -> Predictor:
    """The loader of kind multiscale-cam-2d (model.inference.kinds): the weights on
    ``options.device``, with the inference settings of their metadata overridden by ``options``."""
    settings = settings_for(weights_dir, options)
    return Predictor(load_weights(weights_dir, settings.device), settings)
