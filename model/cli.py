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
from model.training.choices import AUGMENTATIONS, OBJECTIVES, RECIPE_CHOICES, SCHEDULES

NOTICE = NOT_FOR_CLINICAL_USE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model`` with its sub-commands to the ``dicom-node`` parser."""
    parser = subparsers.add_parser(
        "model",
        help="train, evaluate and run the COVID-19 / CAP / normal model (not for clinical use)",
        description="Train, evaluate and run the COVID-19 / CAP / normal model (model/README.md is its card). "
        "Not for clinical use.",
        epilog="example:\n  dicom-node model predict /tmp/covid",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    _add_train(sub)
    _add_train_lungs(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_card(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the network on a labelled data set (patient-level folds)",
        description="Train the network on a labelled data set (patient-level folds), starting from a recipe (--recipe; "
        "every option below overrides the recipe's value); a progress bar on a terminal. Not for clinical use.",
        epilog="examples:\n  dicom-node phantom-dataset /tmp/phantoms --count 300 --rows 256 --slices-min 36 "
        "--slices-max 60 --matched\n"
        "  dicom-node model train --data /tmp/phantoms --out /tmp/weights --max-minutes 60\n"
        "  dicom-node model train --recipe paper --device cuda --data /data/ccccii --out /tmp/weights\n"
        "the shipped weights: benchmarks/cpu_weights.sh (model/README.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="data folder (phantom data set, DICOM series, CC-CCII or MosMedData layout)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="labels CSV (series,label,patient_id); default DATA/labels.csv, none for CC-CCII",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="weights folder to write (model.safetensors + metadata.json)"
    )
    p.add_argument(
        "--recipe",
        choices=RECIPE_CHOICES,
        default="auto",
        help="starting values: cpu (the shipped weights' recipe), paper (the method's), auto (default: cpu on a "
        "CPU, paper on a GPU)",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=None,
        help="slice: every slice carries the series label (the paper's); mil: the series' top-k slices (the cpu "
        "recipe's)",
    )
    p.add_argument("--iterations", type=int, default=None, help="maximum iterations (paper 10000, cpu 5000)")
    p.add_argument(
        "--mil-memory",
        type=int,
        default=None,
        help="objective mil: a series' N most abnormal slices at its previous visit stay among its candidates "
        "(default 0: all random)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="slices (objective slice) or series (objective mil) per batch (paper 24, cpu 8)",
    )
    p.add_argument(
        "--input-size",
        type=_input_size,
        default=None,
        metavar="HxW",
        help="network input height x width, multiples of 32 (paper 224x224, cpu 96x160)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--classes",
        default=None,
        help="comma separated: the three-way model (default covid,cap,normal) or a pair for the paper's binary models",
    )
    _add_schedule_options(p)
    _add_output_options(p)
    p.set_defaults(handler=_train)


def _add_schedule_options(p: argparse.ArgumentParser) -> None:
    """``model train``'s optimisation: learning rate, schedule, validation, loss, folds, augmentation."""
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (paper 1e-4, cpu 1e-3)")
    p.add_argument(
        "--schedule", choices=SCHEDULES, default=None, help="step (paper) or cosine to the end of the budget (cpu)"
    )
    p.add_argument(
        "--lr-step",
        type=int,
        default=None,
        help="schedule step: multiply the learning rate by --lr-gamma every N iterations (paper 3000)",
    )
    p.add_argument("--lr-gamma", type=float, default=None)
    p.add_argument(
        "--validate-every", type=int, default=None, help="iterations between validations (paper 500, cpu 150)"
    )
    p.add_argument(
        "--patience", type=int, default=None, help="stop after N iterations without improvement (paper 1000)"
    )
    p.add_argument("--focal-gamma", type=float, default=None)
    p.add_argument(
        "--folds",
        type=int,
        default=None,
        help="patient-level folds (default 5); 1 trains on everything without validation",
    )
    p.add_argument("--fold", type=int, default=0, help="the validation fold (default 0)")
    p.add_argument(
        "--cross-validate",
        action="store_true",
        help="train every fold; weights in OUT/fold-N, summary in OUT/cross_validation.json",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init",
        default="auto",
        metavar="WEIGHTS_DIR|auto|none",
        help="start from these weights (same classes and network): fine-tuning, at a tenth of the recipe's "
        "learning rate unless --lr; "
        "auto (default): the shipped weights when their classes, network and input are the configuration's; "
        "none: from scratch (Xavier)",
    )
    p.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default=None,
        help="per training slice: flip (left-right; the cpu recipe), flip+affine (also a small shift, scale, "
        "rotation), none (the paper)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-time budget; training stops after a last validation when spent",
    )


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """``model train``'s outputs and resources: names, cache, workers, log, the lung network."""
    p.add_argument("--name", default=None, help="model name in the metadata")
    p.add_argument("--version", default=None, help="model version in the metadata")
    p.add_argument("--cache", type=Path, default=None, help="folder for cached pre-processed slices")
    p.add_argument(
        "--workers", type=int, default=1, help="processes that prepare (read, segment, pre-process) series in parallel"
    )
    p.add_argument("--log", type=Path, default=None, help="also log to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--lungs",
        default=None,
        metavar="DIR|truth",
        help="folder with the lung network (dicom-node model train-lungs) that finds the lungs, copied into OUT; "
        "'truth': each series' known lungs (phantoms), so train-lungs can run at the same time "
        "(default: OUT's own, else the shipped weights')",
    )


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="slice/series metrics, ROC AUC, pointing game and Dice; PNGs beside the JSON",
        description="Slice and series metrics, ROC AUC, pointing game and Dice on a labelled data set; ROC "
        "curves and overlay PNGs beside the JSON; a progress bar on a terminal.",
        epilog="example:\n  dicom-node model evaluate --data /tmp/held-out --json /tmp/eval/metrics.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--labels", type=Path, default=None, help="labels CSV; default DATA/labels.csv, none for CC-CCII")
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped weights)")
    p.add_argument(
        "--json", required=True, type=Path, help="metrics JSON to write; ROC curves and overlays go beside it"
    )
    _add_inference_options(p)
    p.add_argument("--overlays", type=int, default=6, help="example overlay PNGs to write (default 6)")
    p.add_argument(
        "--record",
        default=None,
        metavar="KEY",
        help="also store the summary under KEY in the metadata.json of --weights (e.g. held_out_metrics, "
        "validation_metrics); needs --weights",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="validation data only: choose the class bias of the series logits, the indeterminate margin and "
        "the region threshold "
        "on these series and store them in the inference metadata of --weights; needs --weights",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify and localise one series",
        description="Classify and localise one CT series; the result JSON goes to standard output (or --json FILE), "
        "the decision in words to standard error. Exit status: 0 a decision, 1 no decision (the reason says why: "
        "not a chest CT, too few lung slices ...), 2 the input could not be used. Not for clinical use.",
        epilog="examples:\n  dicom-node model predict /tmp/covid > result.json\n  dicom-node model predict "
        "/tmp/covid --json result.json --heatmap map.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("series", type=Path, help="folder of the series' DICOM files")
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped weights)")
    p.add_argument("--json", type=Path, default=Path("-"), help="result JSON to write (default '-': standard output)")
    p.add_argument(
        "--heatmap", type=Path, default=None, help="write the joint map as float32 .npy (slices, rows, columns)"
    )
    _add_inference_options(p)
    p.set_defaults(handler=_predict)


def _add_train_lungs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-lungs",
        help="train the lung network on series with known lung masks (phantoms)",
        description="Train the lung segmentation network on series whose lungs are known (a phantom data set: "
        "the masks beside each series); writes lungs.safetensors and lungs.json to OUT, which "
        "`dicom-node model train --out OUT` then uses and keeps. Not for clinical use.",
        epilog="example:\n  dicom-node model train-lungs --data /tmp/phantoms --out /tmp/weights --max-minutes 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="data folder (a phantom data set)")
    p.add_argument("--labels", type=Path, default=None, help="labels CSV; default DATA/labels.csv")
    p.add_argument("--out", required=True, type=Path, help="weights folder to write the lung network into")
    p.add_argument("--max-minutes", type=float, default=10.0, help="training time (default 10)")
    p.add_argument("--workers", type=int, default=1, help="processes that read and resample the series")
    p.add_argument("--max-series", type=int, default=400, help="series drawn at random to train on (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="WEIGHTS_DIR",
        help="start from this weights folder's lung network (fine-tuning at a quarter of the learning rate)",
    )
    p.add_argument(
        "--work-xy-mm",
        type=float,
        default=None,
        metavar="MM",
        help="the working grid's pixel in mm, over a 448 mm square (default: the --init network's, else 2.8); "
        "the grid is recorded with the weights and inference runs the network on it",
    )
    p.add_argument(
        "--dense-lung-weight",
        type=float,
        default=None,
        metavar="W",
        help="what a dense lung pixel (above -500 HU) near the lung border counts in the cross-entropy "
        "(default 5, as much as the dense tissue beside the lungs); more keeps more consolidation",
    )
    p.set_defaults(handler=_train_lungs)


def _train_lungs(args: argparse.Namespace) -> int:
    from model.training.lungs import train_lungs_folder

    if _missing_data(args):
        return 2
    try:
        desc = train_lungs_folder(
            args.data,
            args.labels,
            args.out,
            max_minutes=args.max_minutes,
            workers=args.workers,
            seed=args.seed,
            max_series=args.max_series,
            init=args.init,
            work_xy_mm=args.work_xy_mm,
            dense_lung_weight=args.dense_lung_weight,
        )
    except ValueError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 2
    training = desc["training"]
    print(
        f"lung network in {args.out}: validation Dice {training['best_val_dice']:.4f} (working grid) after "
        f"{training['iterations']} iterations in {training['seconds'] / 60:.1f} min. {NOTICE}"
    )
    return 0


def _add_card(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "card",
        help="rewrite the figures blocks of Markdown files from a weights folder's metadata",
        description="Rewrite every <!-- figures:NAME --> block of the given Markdown files from the metadata of "
        "the weights (held-out figures, the per-category table, calibration), so that what the READMEs quote "
        "is what the metadata records.",
        epilog="example:\n  dicom-node model card --weights model/weights README.md model/README.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the shipped weights)")
    p.set_defaults(handler=_card)


def _card(args: argparse.Namespace) -> int:
    from model.inference.weights import read_metadata, weights_folder
    from model.training.card import update_file

    meta = read_metadata(weights_folder(args.weights))
    for path in args.files:
        try:
            changed = update_file(path, meta)
        except (OSError, ValueError, KeyError) as exc:
            print(f"dicom-node: {path}: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: {'rewritten' if changed else 'up to date'}")
    return 0


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--localisation",
        choices=("auto", "cam", "cam+ig"),
        default=None,
        help="joint map from CAMs only, CAMs + Integrated Gradients, or auto (cam on a CPU, cam+ig on a GPU); "
        "default: the weights' setting",
    )
    p.add_argument(
        "--ig-slices", type=int, default=None, help="Integrated Gradients on this many most suspicious slices"
    )
    p.add_argument("--threshold", type=float, default=None, help="joint-map threshold for regions, in (0, 1)")
    p.add_argument(
        "--aggregation", choices=("top_k", "mean"), default=None, help="series rule (default: the weights' setting)"
    )
    p.add_argument("--batch", type=int, default=32, help="slices per forward batch")


def _settings(
    args: argparse.Namespace,
) -> Any:  # -> model.inference.series_rule.PredictorSettings (torch: imported lazily)
    from model.inference.multiscale_cam import settings_for

    return settings_for(args.weights, _options(args))


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


def _input_size(text: str) -> tuple[int, int]:
    """``HxW`` (or one number for a square) -> (height, width), multiples of 32."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW (e.g. 64x96)") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(v < 32 or v % 32 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be multiples of 32 (e.g. 64x96)")
    return values[0], values[1]


def _missing_data(args: argparse.Namespace) -> bool:
    if args.data.is_dir():
        return False
    print(
        f"dicom-node: --data {args.data} is not a folder: name a data set (e.g. one written by dicom-node "
        f"phantom-dataset)",
        file=sys.stderr,
    )
    return True


def _train(args: argparse.Namespace) -> int:
    from model.training.folder import FINE_TUNE_LR_FACTOR, resolve_init, train_folder
    from model.training.recipes import recipe

    if _missing_data(args):
        return 2

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    base = recipe(args.recipe, args.device)
    spec = (
        dataclasses.replace(base.input, height=args.input_size[0], width=args.input_size[1])
        if args.input_size
        else None
    )
    try:
        config = recipe(
            args.recipe,
            args.device,
            input=spec,
            objective=args.objective,
            batch_size=args.batch,
            iterations=args.iterations,
            mil_memory=args.mil_memory,
            learning_rate=args.lr,
            schedule=args.schedule,
            lr_step=args.lr_step,
            lr_gamma=args.lr_gamma,
            validate_every=args.validate_every,
            patience=args.patience,
            focal_gamma=args.focal_gamma,
            folds=args.folds,
            fold=args.fold,
            seed=args.seed,
            classes=classes,
            max_minutes=args.max_minutes,
            augment=args.augment,
        )
        init = resolve_init(args.init, config)
    except ValueError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 2
    if init is not None:
        if args.lr is None:
            config = dataclasses.replace(config, learning_rate=config.learning_rate * FINE_TUNE_LR_FACTOR)
        print(
            f"dicom-node: starting from the weights in {init.weights_dir} (fine-tuning, learning rate "
            f"{config.learning_rate:g}); --init none trains from scratch",
            file=sys.stderr,
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
        init_weights=init.weights_dir if init is not None else None,
        lungs=args.lungs if args.lungs in (None, "truth") else Path(args.lungs),
    )
    print(json.dumps(summary, indent=2))
    print(NOTICE, file=sys.stderr)
    return 0


def _command_line(action: str) -> str | None:
    """The command as typed from ``action`` on, with every path shortened to its last part: it is
    recorded in a weights' metadata, which must not carry this machine's folders."""
    if action not in sys.argv:
        return None
    words = [Path(w).name if "/" in w else w for w in sys.argv[sys.argv.index(action) :]]
    return "dicom-node model " + " ".join(words)


def _evaluate(args: argparse.Namespace) -> int:
    from model.training.calibration import calibrate
    from model.training.evaluate import evaluate_folder

    if _missing_data(args):
        return 2

    if (args.calibrate or args.record) and args.weights is None:
        # Both write into the weights' metadata.json: never the shipped weights by default.
        print(
            "dicom-node: --calibrate and --record write into a weights folder's metadata.json: name it with "
            "--weights (the shipped weights are model/weights)",
            file=sys.stderr,
        )
        return 2

    command = _command_line("evaluate")
    settings = _settings(args)
    if args.calibrate:  # fit on the raw series logits
        settings = dataclasses.replace(settings, class_bias=(), min_margin=0.0, temperature=1.0)
    report = evaluate_folder(
        args.data,
        args.labels,
        args.weights,
        args.json,
        settings,
        overlays=args.overlays,
        progress=not args.no_progress,
        record=args.record,
        command=command,
    )
    headline = {k: report["headline"][k] for k in report["headline"]}
    if args.calibrate:
        headline["calibration"] = calibrate(args.weights, report, command)
        if "warning" in headline["calibration"]:
            print(f"dicom-node: warning: {headline['calibration']['warning']}", file=sys.stderr)
    print(json.dumps(headline, indent=2))
    print(NOTICE, file=sys.stderr)
    return 0
