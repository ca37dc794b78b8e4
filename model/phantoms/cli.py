"""``dicom-node phantom`` and ``dicom-node phantom-dataset``: write synthetic chest CT phantoms.

Phantoms are synthetic: they prove the pipeline works, nothing clinical. Not for clinical use.
The phantom modules import torch: they are imported inside the handlers, so that registering
these commands costs nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.contract.notice import PHANTOM_NOTICE
from model.contract.result import CLASSES
from model.phantoms.mix import MIXES
from model.terminal import status

KIND_CHOICES = CLASSES
SYNTAX_CHOICES = ("explicit", "implicit", "deflate", "rle", "jpeg-ls", "jpeg2000")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the phantom sub-commands to ``dicom-node``."""
    one = subparsers.add_parser(
        "phantom",
        help="write one synthetic chest CT series (with its lung/lesion masks beside it)",
        description="Write one synthetic chest CT phantom as a DICOM series in OUT_DIR; the masks go to "
        "OUT_DIR.masks.npz beside it. Synthetic data, not for clinical use.",
        epilog="examples:\n  dicom-node phantom /tmp/covid --kind covid --slices 96\n  dicom-node phantom "
        "/tmp/small --kind cap --slices 24 --rows 256 --seed 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    one.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    one.add_argument("--kind", choices=KIND_CHOICES, required=True)
    one.add_argument("--slices", type=int, default=None, help="number of slices (default: drawn from the seed, 80-160)")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--rows", type=int, default=512, help="matrix rows (and columns unless --columns)")
    one.add_argument("--columns", type=int, default=None)
    one.add_argument("--slice-spacing", type=float, default=None, help="mm between slices (default: cover the chest)")
    one.add_argument("--transfer-syntax", choices=SYNTAX_CHOICES, default="explicit")
    one.add_argument(
        "--multiframe", action="store_true", help="one Enhanced CT multi-frame file instead of one file per slice"
    )
    one.add_argument("--patient-id", default=None)
    one.set_defaults(handler=_phantom)

    many = subparsers.add_parser(
        "phantom-dataset",
        help="write a class-balanced set of synthetic chest CT series and labels.csv",
        description="Write COUNT phantom series (covid, cap, normal in turn) under OUT_DIR with labels.csv "
        "(series,label,patient_id); a progress bar on a terminal. Synthetic data, not for clinical use.",
        epilog="example:\n  dicom-node phantom-dataset /tmp/phantoms --count 30 --rows 256 --slices-min 30 "
        "--slices-max 45",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    many.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    many.add_argument("--count", type=int, required=True)
    many.add_argument("--seed", type=int, default=0)
    many.add_argument("--slices-min", type=int, default=48)
    many.add_argument("--slices-max", type=int, default=96)
    many.add_argument("--rows", type=int, default=512)
    many.add_argument("--columns", type=int, default=None)
    many.add_argument("--series-per-patient", type=int, default=1)
    many.add_argument(
        "--matched",
        action="store_true",
        help="scan every patient once per class (same anatomy, different disease): anatomy says nothing about "
        "the label",
    )
    many.add_argument(
        "--native-slices",
        action="store_true",
        help="each series as its scan draws it (range over slice thickness, 0.625-5 mm), at most --slices-max slices",
    )
    many.add_argument(
        "--kinds",
        type=_kinds,
        default=KIND_CHOICES,
        metavar="K[,K...]",
        help=f"the classes to make, dealt in turn (default: {','.join(KIND_CHOICES)}); e.g. 'cap' for a set "
        "that trains the lung network on consolidation",
    )
    many.add_argument(
        "--mix",
        choices=sorted(MIXES),
        default="default",
        help="how often each confounder and disease pattern is drawn (default: the generator's own); 'hard' gives "
        "every class more and denser dependent atelectasis and each disease more of its smallest forms, for "
        "training on what a model gets wrong",
    )
    many.add_argument("--transfer-syntax", choices=SYNTAX_CHOICES, default="explicit")
    many.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none when standard error is not a terminal)"
    )
    many.set_defaults(handler=_phantom_dataset)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    wrong = [k for k in kinds if k not in KIND_CHOICES]
    if not kinds or wrong or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of distinct classes among {', '.join(KIND_CHOICES)}, got {text!r}"
        )
    return kinds


def _phantom(args: argparse.Namespace) -> int:
    from model.phantoms.phantom import make_phantom
    from model.phantoms.writer import masks_path, write_phantom_series

    if args.rows < 32 or (args.columns is not None and args.columns < 32):
        print("dicom-node: --rows and --columns must be >= 32", file=sys.stderr)
        return 2
    with status(f"making a {args.kind} phantom"):
        phantom = make_phantom(
            args.kind,
            seed=args.seed,
            slices=args.slices,
            rows=args.rows,
            columns=args.columns or args.rows,
            slice_spacing=args.slice_spacing,
        )
    with status(f"writing {phantom.shape[0]} slices to {args.out_dir}"):
        out = write_phantom_series(
            phantom,
            args.out_dir,
            transfer_syntax=args.transfer_syntax,
            multiframe=args.multiframe,
            patient_id=args.patient_id,
        )
    print(
        f"{out}: {phantom.kind} phantom, {phantom.shape[0]} slices of {phantom.shape[1]}x{phantom.shape[2]}, "
        f"spacing {phantom.spacing[0]:.2f}/{phantom.spacing[1]:.3f} mm, "
        f"lesions {100 * phantom.lesion_fraction:.1f}% of lung; "
        f"masks in {masks_path(out)}. {PHANTOM_NOTICE}"
    )
    return 0


def _phantom_dataset(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model.phantoms.dataset import PhantomPlan, write_phantom_dataset

    # A bar on a terminal; nothing per series when piped or with --quiet (labels.csv lists them).
    bar = tqdm(
        total=args.count,
        unit="series",
        desc="phantoms",
        file=sys.stderr,
        leave=False,
        disable=args.quiet or not sys.stderr.isatty(),
    )

    def progress(done: int, total: int, plan: PhantomPlan) -> None:
        bar.set_postfix_str(f"{plan.name}: {plan.kind}, {plan.slices or 'native'} slices", refresh=False)
        bar.update(done - bar.n)

    try:
        labels = write_phantom_dataset(
            args.out_dir,
            args.count,
            seed=args.seed,
            kinds=args.kinds,
            slices_min=args.slices_min,
            slices_max=args.slices_max,
            rows=args.rows,
            columns=args.columns or args.rows,
            series_per_patient=args.series_per_patient,
            transfer_syntax=args.transfer_syntax,
            matched=args.matched,
            native_slices=args.native_slices,
            mix=MIXES[args.mix],
            progress=progress,
        )
    except ValueError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    print(f"{labels}: {args.count} series. {PHANTOM_NOTICE}")
    return 0
