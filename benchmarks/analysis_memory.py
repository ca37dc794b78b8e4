"""Where the worker's memory goes: one series through the worker's steps in this process.

The steps of dicom_node.pipeline.analyse, without database or broker: read the series (int16 HU
where exact), the predictor (shipped weights, CPU), result.json and maps.npz, the DICOM objects
built (Parametric Map pixels deferred to the file) and written. After each step it prints the
high-water mark of the resident set during the step (VmHWM, reset through /proc/self/clear_refs),
the resident set after it and the seconds; then the result files' bytes against the CT's, per
kind (the end-to-end figures are benchmarks/thin_slice.py's).

Usage (from the repository root; a phantom from ``dicom-node phantom``)::

    dicom-node phantom /tmp/p1000 --kind covid --slices 1000 --rows 512 --slice-spacing 0.5
    .venv/bin/python -m benchmarks.analysis_memory /tmp/p1000 /tmp/p1000-results

Linux only (/proc). Not for clinical use: the phantoms are synthetic.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from pathlib import Path

import psutil

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions, SourceSeries
from dicom_node.storage.results import JobArtefacts
from model.inference.io import load_series
from model.inference.kinds import load_predictor
from model.inference.options import InferenceOptions

MB = 1024 * 1024


def _step(name: str, started: float) -> int:
    """Print the step's peak and the resident set now; reset the peak. Returns the peak."""
    status = Path("/proc/self/status").read_text().splitlines()
    peak = int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    now = psutil.Process().memory_info().rss
    print(
        f"{name:8} peak {peak / MB:7.0f} MB  after {now / MB:7.0f} MB  {time.perf_counter() - started:7.1f} s",
        flush=True,
    )
    Path("/proc/self/clear_refs").write_text("5")
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("series", type=Path, help="folder of one CT series")
    parser.add_argument("out", type=Path, help="results folder (replaced)")
    parser.add_argument("--sc-slices", choices=["key", "lung"], default="key")
    args = parser.parse_args(argv)

    t = time.perf_counter()
    predictor = load_predictor(None, InferenceOptions(device="cpu"))
    peaks = [_step("model", t)]
    files = sorted(p for p in args.series.rglob("*") if p.is_file() and not p.name.endswith(".npz"))
    t = time.perf_counter()
    volume = load_series(files, compact=True)
    peaks.append(_step("load", t))
    print(f"         {volume.shape} {volume.hu.dtype}")
    t = time.perf_counter()
    result = predictor.predict(volume)
    peaks.append(_step("predict", t))
    print(f"         {result.decision}, {len(result.regions)} region(s)")
    shutil.rmtree(args.out, ignore_errors=True)
    artefacts = JobArtefacts(args.out, 1)
    t = time.perf_counter()
    artefacts.write_result(result)
    peaks.append(_step("maps", t))
    t = time.perf_counter()
    options = OutputOptions(sc_slices=args.sc_slices, created=datetime.datetime(2024, 1, 1), defer_map_pixels=True)
    objects = build_outputs(result, SourceSeries.from_volume(volume), options=options)
    peaks.append(_step("build", t))
    t = time.perf_counter()
    rows = artefacts.write_objects(objects, 1)
    peaks.append(_step("write", t))
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row["kind"]] = sizes.get(row["kind"], 0) + (args.out / row["path"]).stat().st_size
    ct = sum(p.stat().st_size for p in files)
    total = sum(sizes.values())
    print(f"peak RSS {max(peaks) / MB:.0f} MB; results {total / MB:.1f} MB, the CT {ct / MB:.1f} MB: {total / ct:.1%}")
    print("by kind (kB): " + ", ".join(f"{k} {v // 1024}" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
