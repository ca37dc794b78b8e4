"""``dicom-node model train | evaluate | predict``: the model's command line.

The output of ``predict`` is fixed (others read it): the JSON of :meth:`SeriesResult.to_json` and,
with ``--heatmap``, a float32 .npy in [0, 1] of shape (slices, rows, columns) of the input series,
slices ascending along the slice normal. Torch is imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from model.contract.notice import NOT_FOR_CLINICAL_USE
from model.terminal import status

NOTICE = NOT_FOR_CLINICAL_USE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` with its sub-commands to the ``dicom-node`` parser."""
    parser = subparsers.add_parser(
        "model",
        help="train, evaluate and run the COVID-19 / CAP / normal model (not for clinical use)",
        description="Train, evaluate and run the COVID-19 / CAP / normal model (model/README.md is its card). Not for clinical use.",
        epilog="example:\n  dicom-node model predict /tmp/covid",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    p = sub.add_parser(
        "train",
        help="train the network on a labelled data set (patient-level folds)",
        description="Train the network on a labelled data set (patient-level folds); a progress bar on a terminal. Not for clinical use.",
        epilog="example:\n  dicom-node phantom-dataset /tmp/phantoms --count 30 --rows 256\n  dicom-node model train --data /tmp/phantoms --out /tmp/weights --max-minutes 25",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="data folder (phantom data set, DICOM series, CC-CCII or MosMedData layout)")
    p.add_argument("--labels", type=Path, default=None, help="labels CSV (series,label,patient_id); default DATA/labels.csv, none for CC-CCII")
    p.add_argument("--out", required=True, type=Path, help="weights folder to write (model.safetensors + metadata.json)")
    p.add_argument("--iterations", type=int, default=10_000, help="maximum iterations (default 10000, the paper's)")
    p.add_argument("--batch", type=int, default=24, help="slices per batch (default 24)")
    p.add_argument("--image-size", type=int, default=224, help="network input size (default 224, divisible by 32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--classes", default="covid,cap,normal", help="comma separated: the three-way model (default) or a pair for the paper's binary models")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--lr-step", type=int, default=3000, help="multiply the learning rate by --lr-gamma every N iterations (default 3000)")
    p.add_argument("--lr-gamma", type=float, default=0.1)
    p.add_argument("--validate-every", type=int, default=500, help="iterations between validations (default 500)")
    p.add_argument("--patience", type=int, default=1000, help="stop after N iterations without improvement (default 1000)")
    p.add_argument("--focal-gamma", type=float, default=1.0)
    p.add_argument("--folds", type=int, default=5, help="patient-level folds (default 5); 1 trains on everything without validation")
    p.add_argument("--fold", type=int, default=0, help="the validation fold (default 0)")
    p.add_argument("--cross-validate", action="store_true", help="train every fold; weights in OUT/fold-N, summary in OUT/cross_validation.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, metavar="WEIGHTS_DIR", help="start from these weights (same classes and architecture) instead of Xavier: fine-tuning")
    p.add_argument("--augment", action="store_true", help="random left-right flip and small affine per training slice (not in the method; for small data sets)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-time budget; training stops after a last validation when spent")
    p.add_argument("--name", default=None, help="model name in the metadata")
    p.add_argument("--version", default=None, help="model version in the metadata")
    p.add_argument("--cache", type=Path, default=None, help="folder for cached pre-processed slices")
    p.add_argument("--workers", type=int, default=1, help="processes that prepare (read, segment, pre-process) series in parallel")
    p.add_argument("--log", type=Path, default=None, help="also log to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "evaluate",
        help="slice/series metrics, ROC AUC, pointing game and Dice; PNGs beside the JSON",
        description="Slice and series metrics, ROC AUC, pointing game and Dice on a labelled data set; ROC curves and overlay PNGs beside the JSON; a progress bar on a terminal.",
        epilog="example:\n  dicom-node model evaluate --data /tmp/held-out --json /tmp/eval/metrics.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--labels", type=Path, default=None, help="labels CSV; default DATA/labels.csv, none for CC-CCII")
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped weights)")
    p.add_argument("--json", required=True, type=Path, help="metrics JSON to write; ROC curves and overlays go beside it")
    _add_inference_options(p)
    p.add_argument("--overlays", type=int, default=6, help="example overlay PNGs to write (default 6)")
    p.add_argument("--record", default=None, metavar="KEY", help="also store the summary under KEY in the metadata.json of --weights (e.g. held_out_metrics, validation_metrics); needs --weights")
    p.add_argument(
        "--fit-class-bias",
        action="store_true",
        help="validation data only: choose the series logits' class bias that maximises series accuracy here and store it in the inference metadata of --weights; needs --weights",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser(
        "predict",
        help="classify and localise one series",
        description="Classify and localise one CT series; the result JSON goes to standard output (or --json FILE), "
        "the decision in words to standard error. Exit status: 0 a decision, 1 no decision (the reason says why: "
        "not a chest CT, too few lung slices ...), 2 the input could not be used. Not for clinical use.",
        epilog="examples:\n  dicom-node model predict /tmp/covid > result.json\n  dicom-node model predict /tmp/covid --json result.json --heatmap map.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("series", type=Path, help="folder of the series' DICOM files")
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped weights)")
    p.add_argument("--json", type=Path, default=Path("-"), help="result JSON to write (default '-': standard output)")
    p.add_argument("--heatmap", type=Path, default=None, help="write the joint map as float32 .npy (slices, rows, columns)")
    _add_inference_options(p)
    p.set_defaults(handler=_predict)


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--localisation", choices=("cam", "cam+ig"), default=None, help="joint map from CAMs only, or CAMs + Integrated Gradients (default: the weights' setting)")
    p.add_argument("--ig-slices", type=int, default=None, help="Integrated Gradients on this many most suspicious slices")
    p.add_argument("--threshold", type=float, default=None, help="joint-map threshold for regions, in (0, 1)")
    p.add_argument("--aggregation", choices=("top_k", "mean"), default=None, help="series rule (default: the weights' setting)")
    p.add_argument("--batch", type=int, default=32, help="slices per forward batch")


def _settings(args: argparse.Namespace) -> Any:  # -> model.inference.multiscale_cam.PredictorSettings (torch: imported lazily)
    from model.inference.multiscale_cam import settings_for

    return settings_for(
        args.weights,
        device=args.device,
        batch_size=args.batch,
        mode=args.localisation,
        ig_slices=args.ig_slices,
        threshold=args.threshold,
        aggregation=args.aggregation,
    )


def _options(args: argparse.Namespace) -> Any:  # -> model.inference.options.InferenceOptions
    from model.inference.options import InferenceOptions

    return InferenceOptions(
        device=args.device,
        batch_size=args.batch,
        localisation=args.localisation,
        ig_slices=args.ig_slices,
        threshold=args.threshold,
        aggregation=args.aggregation,
    )


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from model.inference.kinds import load_predictor

    if not args.series.exists():
        print(f"dicom-node: {args.series} does not exist: name the folder of one series' DICOM files", file=sys.stderr)
        return 2
    with status("loading the model"):
        predictor = load_predictor(args.weights, _options(args))
    with status(f"analysing {args.series} (a minute or two on a CPU)"):
        result = predictor.predict(args.series)
    text = json.dumps(result.to_json(), indent=2)
    if str(args.json) == "-":
        print(text)
    else:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if args.heatmap is not None:
        if result.heatmap is None:
            print(f"no heatmap written: {result.reason}", file=sys.stderr)
        else:
            args.heatmap.parent.mkdir(parents=True, exist_ok=True)
            np.save(args.heatmap, result.heatmap.astype(np.float32, copy=False))
    print(result.reason, file=sys.stderr)  # it names the decision ("COVID-19: p=...", "no decision: ...")
    return 1 if result.decision == "no_decision" else 0


def _missing_data(args: argparse.Namespace) -> bool:
    if args.data.is_dir():
        return False
    print(f"dicom-node: --data {args.data} is not a folder: name a data set (e.g. one written by dicom-node phantom-dataset)", file=sys.stderr)
    return True


def _train(args: argparse.Namespace) -> int:
    from model.training.train import TrainConfig, train_folder

    if _missing_data(args):
        return 2

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    config = TrainConfig(
        image_size=args.image_size,
        batch_size=args.batch,
        iterations=args.iterations,
        learning_rate=args.lr,
        lr_step=args.lr_step,
        lr_gamma=args.lr_gamma,
        validate_every=args.validate_every,
        patience=args.patience,
        focal_gamma=args.focal_gamma,
        folds=args.folds,
        fold=args.fold,
        seed=args.seed,
        device=args.device,
        classes=classes,
        max_minutes=args.max_minutes,
        augment=args.augment,
    )
    summary = train_folder(
        args.data,
        args.labels,
        args.out,
        config,
        cross_validate=args.cross_validate,
        name=args.name,
        version=args.version,
        cache_dir=args.cache,
        log_file=args.log,
        progress=not args.no_progress,
        workers=args.workers,
        init_weights=args.init,
    )
    print(json.dumps(summary, indent=2))
    print(NOTICE, file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.training.evaluate import evaluate_folder, store_class_bias

    if _missing_data(args):
        return 2

    if (args.fit_class_bias or args.record) and args.weights is None:
        # Both write into the weights' metadata.json: never the shipped weights by default.
        print("dicom-node: --fit-class-bias and --record write into a weights folder's metadata.json: name it with --weights (the shipped weights are model/weights)", file=sys.stderr)
        return 2

    command = "dicom-node model " + " ".join(sys.argv[sys.argv.index("evaluate"):]) if "evaluate" in sys.argv else None
    settings = _settings(args)
    if args.fit_class_bias:
        settings = dataclasses.replace(settings, class_bias=())  # fit on the raw series logits
    report = evaluate_folder(args.data, args.labels, args.weights, args.json, settings, overlays=args.overlays, progress=not args.no_progress, record=args.record, command=command)
    headline = {k: report["headline"][k] for k in report["headline"]}
    if args.fit_class_bias:
        headline["class_bias_fit"] = store_class_bias(args.weights, report, command)
    print(json.dumps(headline, indent=2))
    print(NOTICE, file=sys.stderr)
    return 0
