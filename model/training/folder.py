"""Training from a data folder (``dicom-node model train``): discover and prepare the series
(cached slices, in worker processes, the lungs found by the weights' lung network), pick the
starting weights, train one fold or every fold, and write each fold's weights with their metadata.
The training loop itself is model.training.train."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from platformdirs import user_cache_path
from tqdm import tqdm

from model.contract.notice import WEIGHTS_NOTICE
from model.inference.io import SeriesReadError
from model.inference.network import WeaklySupervisedNet
from model.inference.preprocess import InputSpec
from model.inference.series_rule import MIN_MARGIN_FLOOR, PredictorSettings
from model.inference.weights import (
    LUNGS_FILE,
    LUNGS_METADATA_FILE,
    SHIPPED_WEIGHTS_DIR,
    LoadedModel,
    load_lung_segmenter,
    load_weights,
    save_weights,
)
from model.training.cache import TRUE_LUNGS, PreparedDataset, prepare_series
from model.training.datasets import discover, phantom_provenance
from model.training.train import SeriesSlices, TrainConfig, TrainResult, split_by_patient, train

log = logging.getLogger(__name__)

# Starting from trained weights (``--init``), the recipe's learning rate times this unless one is
# given: the recipe's rate is for Xavier-initialised weights and would first undo what they know.
FINE_TUNE_LR_FACTOR = 0.1


def _default_cache_dir() -> Path:
    return user_cache_path("covid-ct-node") / "slices"


def _describe_data(
    data_dir: Path,
    labels_csv: Path | None,
    series: Sequence[SeriesSlices],
    skipped: Sequence[tuple[Any, str]],
    records: Sequence[Any],
) -> dict[str, Any]:
    per_class: dict[str, int] = {}
    for s in series:
        per_class[s.label] = per_class.get(s.label, 0) + 1
    out: dict[str, Any] = {
        # Folder and file names only: the metadata ships, and must not carry this machine's folders.
        "folder": Path(data_dir).name,
        "labels": Path(labels_csv).name if labels_csv else None,
        "layouts": sorted({r.layout for r in records}),
        "series": len(series),
        "patients": len({s.patient_id for s in series}),
        "per_class": per_class,
        "lung_slices": int(sum(s.slices.shape[0] for s in series)),
        "skipped": [{"series": r.series_id, "reason": why} for r, why in skipped],
    }
    provenance = phantom_provenance(records)
    if provenance:
        out.update(provenance)
        out["synthetic"] = "model.phantoms chest CT phantoms (dicom-node phantom-dataset): synthetic, not patients"
    return out


_SEGMENTERS: dict[str, Any] = {}


def _segmenter(lungs_dir: Path | str | None) -> tuple[Any, str]:
    """The lung network of ``lungs_dir`` (loaded once per process) and its identity for the cache;
    TRUE_LUNGS: each series' known lungs."""
    if lungs_dir is None:
        return None, "threshold"
    if lungs_dir == TRUE_LUNGS:
        return None, TRUE_LUNGS
    key = str(lungs_dir)
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = load_lung_segmenter(lungs_dir)
    seg = _SEGMENTERS[key]
    return seg, "threshold" if seg is None else json.loads((Path(lungs_dir) / LUNGS_METADATA_FILE).read_text())[
        "weights_sha256"
    ]


def _prepare_one(args: tuple[Any, Path, InputSpec, Path | str | None]) -> tuple[Any, Any, str | None]:
    torch.set_num_threads(1)
    record, cache, spec, lungs_dir = args
    segmenter, lungs_id = _segmenter(lungs_dir)
    try:
        return record, prepare_series(record, cache, spec=spec, lungs=segmenter, lungs_id=lungs_id), None
    except (SeriesReadError, ValueError) as exc:
        return record, None, str(exc)


def _prepare_parallel(
    records: Sequence[Any],
    cache: Path,
    spec: InputSpec,
    workers: int,
    tick: Callable[[int, int, Any], None] | None,
    lungs_dir: Path | str | None = None,
) -> Any:
    """model.training.cache.prepare_dataset over ``workers`` processes (same cache, same skipping)."""

    out = PreparedDataset(series=[])
    by_id: dict[str, Any] = {}
    jobs = [(r, cache, spec, lungs_dir) for r in records]
    results = map(_prepare_one, jobs) if workers <= 1 else None
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, (record, cached, error) in enumerate(results or pool.map(_prepare_one, jobs), start=1):
            if cached is None:
                log.warning("skipping %s: %s", record.series_id, error)
                out.skipped.append((record, str(error)))
            else:
                by_id[record.series_id] = cached
            if tick is not None:
                tick(i, len(records), record)
    out.series = [by_id[r.series_id] for r in records if r.series_id in by_id]
    return out


def default_metadata(config: TrainConfig, name: str | None = None, version: str | None = None) -> dict[str, Any]:
    """The metadata of freshly trained weights, before data and metrics are added."""
    classes = list(config.classes)
    return {
        "name": name
        or ("covid-ct-multiscale-cam" if len(classes) == 3 else "covid-ct-multiscale-cam-" + "-".join(classes)),
        "version": version or "0.0.0+local",
        "classes": classes,
        "method": "Hu et al., IEEE Access 8 (2020), doi:10.1109/ACCESS.2020.3005510: 2D multi-scale CAM "
        "network, weak (series) labels",
        "input": config.input.to_json(),
        "aggregation": {
            "rule": "top_k",
            "description": "series logits = mean of the mean-over-scales slice logits over the k most abnormal "
            "lung slices "
            "(1 - p(normal)), k = max(top_k_min, ceil(top_k_fraction * lung slices)); softmax; decision = argmax",
        },
        "inference": inference_defaults(),
        "training": {"config": config.to_json()},
        "notice": WEIGHTS_NOTICE,
    }


def inference_defaults() -> dict[str, Any]:
    """The inference settings new weights start with: PredictorSettings' own defaults (the one place
    they are written), the indeterminate margin at its floor; calibration replaces what it fits."""
    settings = asdict(PredictorSettings(min_margin=MIN_MARGIN_FLOOR))
    for key in ("device", "batch_size"):  # the caller's choice, not the weights'
        settings.pop(key)
    return json.loads(json.dumps(settings))


def _result_json(result: TrainResult) -> dict[str, Any]:
    return {
        "best_iteration": result.best_iteration,
        "selection": result.selection,
        "best_val_value": result.best_val_accuracy,
        "iterations_run": result.iterations_run,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 1),
        "class_weights": result.class_weights,
        "history": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in h.items()} for h in result.history],
    }


def resolve_init(init: str | Path | None, config: TrainConfig) -> LoadedModel | None:
    """The weights training starts from, loaded (None: from scratch): ``init`` a folder (same classes and network as
    ``config``, else ValueError; another input size is allowed: the network is convolutional),
    "none" (or None) from scratch, "auto" the shipped weights when their classes, network and input
    preparation are all those of ``config`` (else from scratch)."""
    if init is None or str(init) == "none":
        return None
    folder = SHIPPED_WEIGHTS_DIR if str(init) == "auto" else Path(init)
    if str(init) == "auto" and not (folder / "model.safetensors").is_file():
        return None
    loaded = load_weights(folder)
    wanted = WeaklySupervisedNet(
        num_classes=len(config.classes), widths=config.widths, depths=config.depths, dropout=config.dropout
    ).architecture()
    differs = [
        what
        for what, same in (
            ("classes", loaded.classes == tuple(config.classes)),
            ("network", loaded.network.architecture() == dict(wanted)),
            ("input", loaded.input_spec == config.input or str(init) != "auto"),
        )
        if not same
    ]
    if not differs:
        return loaded
    if str(init) == "auto":
        log.info("training from scratch: the shipped weights' %s differ from the configuration's", ", ".join(differs))
        return None
    raise ValueError(f"--init {folder}: its {', '.join(differs)} differ from the training configuration's")


def _lungs_folder(lungs: Path | str | None, out_dir: Path) -> Path | str | None:
    """What finds the lungs of the series to prepare (see train_folder): TRUE_LUNGS, or a folder
    whose lung network is copied into ``out_dir`` (by default ``out_dir``'s own, else the shipped
    weights'); None (the threshold method) when there is none."""
    if lungs == TRUE_LUNGS:
        return TRUE_LUNGS
    if lungs is None:
        if (out_dir / LUNGS_METADATA_FILE).is_file():
            return out_dir
        if not (SHIPPED_WEIGHTS_DIR / LUNGS_METADATA_FILE).is_file():
            return None
        lungs = SHIPPED_WEIGHTS_DIR
    lungs = Path(lungs)
    if not (lungs / LUNGS_METADATA_FILE).is_file():
        raise ValueError(f"--lungs {lungs}: no lung network there ({LUNGS_METADATA_FILE} missing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if lungs.resolve() != out_dir.resolve():
        for name in (LUNGS_FILE, LUNGS_METADATA_FILE):
            shutil.copyfile(lungs / name, out_dir / name)
    return out_dir


def train_folder(
    data_dir: Path,
    labels_csv: Path | None,
    out_dir: Path,
    config: TrainConfig | None = None,
    *,
    cross_validate: bool = False,
    name: str | None = None,
    version: str | None = None,
    cache_dir: Path | None = None,
    log_file: Path | None = None,
    progress: bool = False,
    workers: int = 1,
    init_weights: str | Path | None = None,
    lungs: Path | str | None = None,
) -> dict[str, Any]:
    """Prepare (cached) slices of a data folder, train (one fold, or every fold with
    ``cross_validate``), and write weights + metadata to ``out_dir`` (``out_dir/fold-N`` per fold).
    ``workers`` > 1 prepares series in that many processes; ``init_weights`` (a weights folder of the
    same architecture and classes, or "auto"/"none": :func:`resolve_init`) starts training from those
    weights. ``lungs``: a folder with a lung network (``dicom-node model train-lungs``) that finds the
    lungs, copied into ``out_dir``; "truth": every series' known lungs (phantoms: the masks beside
    them), so the lung network can train at the same time; by default ``out_dir``'s own, else the
    shipped weights' (real data has no known lungs), else the threshold method. Returns
    a summary (also in the metadata)."""
    config = config or TrainConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    with _log_to(log_file):
        started = time.monotonic()
        records = discover(data_dir, labels_csv)
        unknown = sorted({r.label for r in records} - set(config.classes))
        if unknown:
            log.info("leaving out series labelled %s (not among the classes %s)", unknown, config.classes)
            records = [r for r in records if r.label in config.classes]
        cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        prepared = _prepare_with_progress(
            records, cache, config.input, workers, progress, _lungs_folder(lungs, out_dir)
        )
        series = prepared.series
        log.info(
            "prepared %d series (%d skipped) in %.0f s", len(series), len(prepared.skipped), time.monotonic() - started
        )
        data_json = _describe_data(data_dir, labels_csv, series, prepared.skipped, records)
        summary: dict[str, Any] = {"data": data_json, "config": config.to_json(), "folds": []}
        loaded = resolve_init(init_weights, config)
        folds = range(config.folds) if cross_validate and config.folds > 1 else [config.fold]
        for fold in folds:
            target = out_dir / f"fold-{fold}" if cross_validate and config.folds > 1 else out_dir
            fold_config = dataclasses.replace(config, fold=fold)
            summary["folds"].append(
                _train_fold(series, fold_config, target, loaded, data_json, name, version, progress)
            )
        accs = [f["best_val_value"] for f in summary["folds"] if f["best_val_value"] is not None]
        if len(accs) > 1:
            summary["cross_validation"] = {
                "selection": config.selection,
                "mean": float(np.mean(accs)),
                "std": float(np.std(accs)),
            }
            (out_dir / "cross_validation.json").write_text(json.dumps(summary, indent=2) + "\n")
        summary["seconds"] = round(time.monotonic() - started, 1)
        return summary


@contextlib.contextmanager
def _log_to(log_file: Path | None) -> Iterator[None]:
    """The model's log records also go to ``log_file`` (INFO and up) while the block runs."""
    if log_file is None:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("model").addHandler(handler)
    logging.getLogger("model").setLevel(logging.INFO)
    try:
        yield
    finally:
        logging.getLogger("model").removeHandler(handler)
        handler.close()


def _prepare_with_progress(
    records: Sequence[Any], cache: Path, spec: InputSpec, workers: int, progress: bool, lungs_dir: Path | str | None
) -> PreparedDataset:
    bar = tqdm(total=len(records), desc="prepare", unit="series", dynamic_ncols=True) if progress else None
    tick = (lambda i, n, r: bar.update(1)) if bar is not None else None
    try:
        return _prepare_parallel(records, cache, spec, workers, tick, lungs_dir)
    finally:
        if bar is not None:
            bar.close()


def _train_fold(
    series: Sequence[SeriesSlices],
    config: TrainConfig,
    target: Path,
    loaded: LoadedModel | None,
    data_json: dict[str, Any],
    name: str | None,
    version: str | None,
    progress: bool,
) -> dict[str, Any]:
    """Train one fold into ``target`` (weights and metadata); returns its line of the summary."""
    train_set, val_set = split_by_patient(series, config.folds, config.fold, config.seed)
    log.info("fold %d: %d training series, %d validation series", config.fold, len(train_set), len(val_set))
    target.mkdir(parents=True, exist_ok=True)
    checkpoint = target / "best-checkpoint.pt"
    init_state = loaded.network.state_dict() if loaded is not None else None
    result = train(train_set, val_set, config, progress=progress, checkpoint=checkpoint, init_state=init_state)
    meta = default_metadata(config, name, version)
    meta["training"].update(_result_json(result))
    meta["training"]["fold"] = config.fold
    if loaded is not None:
        meta["training"]["initialised_from"] = {
            "weights": loaded.weights_dir.name,
            "name": loaded.metadata["name"],
            "version": loaded.metadata["version"],
            "weights_sha256": loaded.metadata["weights_sha256"],
            "training": loaded.metadata.get("training", {}).get("config"),
        }
    meta["training"]["train_series"] = [s.series_id for s in train_set]
    meta["training"]["validation_series"] = [s.series_id for s in val_set]
    meta["training_data"] = data_json
    save_weights(result.network, target, meta)
    checkpoint.unlink(missing_ok=True)
    return {
        "fold": config.fold,
        "weights": str(target),
        "selection": config.selection,
        "best_val_value": result.best_val_accuracy,
        "best_iteration": result.best_iteration,
        "iterations_run": result.iterations_run,
    }
