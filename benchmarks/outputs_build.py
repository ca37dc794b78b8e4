"""Time dicom_node.outputs.build_outputs (SR, SC, SEG, KOS, Parametric Map) for one phantom series.

Usage: ``nice -n 10 .venv/bin/python -m benchmarks.outputs_build [--slices 128] [--size 512] [--sc-slices key]``.
Prints the seconds per kind and for all kinds together, building and encoding (what the export sends),
best of ``--repeat`` runs, then the bytes of each kind as written against the CT's files (the
reference, measured in the same run); ``--sc-slices`` as the worker's setting (default ``key``,
the node's default). CPU only; the phantom and the hand-made result come from the test
helpers (tests/harness/synthetic.py). Not for clinical use.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import io
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions, SourceSeries
from dicom_node.outputs.kinds import OUTPUT_KINDS
from tests.harness import synthetic


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sc-slices", choices=("key", "lung"), default="key")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        phantom = synthetic.make_test_phantom(slices=args.slices, size=args.size)
        series = synthetic.write_series(phantom, Path(tmp) / "ct")
        print(f"phantom {args.slices} x {args.size} x {args.size}: {time.perf_counter() - t:.1f} s (not timed below)")
        t = time.perf_counter()
        sources = SourceSeries.from_files(series.paths, hu=series.hu)
        print(f"read metadata: {time.perf_counter() - t:.2f} s")
        result = synthetic.blob_result(series)
        options = OutputOptions(created=datetime.datetime(2024, 1, 1), sc_slices=args.sc_slices)
        build_outputs(result, sources, kinds=["kos"], options=options)  # imports
        for kind in OUTPUT_KINDS:
            best = min(
                _timed(functools.partial(build_outputs, result, sources, kinds=[kind], options=options))
                for _ in range(args.repeat)
            )
            print(f"{kind:>4}: {best:.2f} s")
        timings = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = build_outputs(result, sources, options=options)
            built = time.perf_counter() - t
            sizes = dict.fromkeys(out, 0)
            for kind, datasets in out.items():
                for ds in datasets:
                    buffer = io.BytesIO()
                    ds.save_as(buffer, enforce_file_format=True)
                    sizes[kind] += buffer.tell()
            timings.append((built, time.perf_counter() - t, sizes))
        built, total, sizes = min(timings, key=lambda timing: timing[:2])
        counts = {k: len(v) for k, v in out.items()}
        size = sum(sizes.values())
        print(f"all kinds {counts}: build {built:.2f} s, build + encode {total:.2f} s, {size / 1e6:.1f} MB")
        ct = sum(Path(path).stat().st_size for path in series.paths)
        print(f"CT (the reference): {ct / 1e6:.1f} MB in {len(series.paths)} files")
        for kind, kind_size in sizes.items():
            print(f"{kind:>4}: {kind_size / 1e6:8.2f} MB {kind_size / ct:7.1%} of the CT")
        print(f" all: {size / 1e6:8.2f} MB {size / ct:7.1%} of the CT")
    return 0


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
