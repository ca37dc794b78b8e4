"""Thin-slice and multi-frame series through the real node: memory, turnaround and result sizes.

Runs what benchmarks/turnaround.py runs (a private Orthanc as the PACS, the node
as ``dicom-node up`` with its embedded database and broker, DCMTK's storescu) with three COVID-19
phantoms of 512 x 512 in one run: the reference series of 300 slices at 1 mm, a thin-slice series
of 1,000 slices at 0.5 mm, and another phantom of 1,000 slices at 0.5 mm (seed 502) as one
Enhanced CT (multi-frame) instance.
A warm-up series of 32 slices goes first (model loaded).

For each series it prints:

- worker_peak_mb / listener_peak_mb: the high-water mark of the resident set (VmHWM, reset before
  each series through /proc/PID/clear_refs) of the worker process(es) and of the listener
  process(es) while the series is received, analysed and exported;
- seconds: last C-STORE response -> the last result stored in Orthanc (benchmarks.turnaround's
  ``total``), beyond_quiet (less the AE's quiet period), and its ratio to the 300-slice series'
  (the target: <= 1.5);
- results_mb / ct_mb and their ratio (the target: all of a study's results <= 25 % of the CT's
  bytes), with the bytes per kind.

With ``--idle-jobs N`` it then sends N small series (32 x 256 x 256) one after another and prints
the worker's resident set between jobs (before the first, after each): flat is the target.

Usage (from the repository root; Orthanc, DCMTK and the shipped weights as for the tests)::

    .venv/bin/python -m benchmarks.thin_slice
    .venv/bin/python -m benchmarks.thin_slice --thin-slices 600 --idle-jobs 20 --json /tmp/thin.json

Linux only (/proc). Not for clinical use: the phantoms are synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pydicom
from sqlalchemy import select

from benchmarks.turnaround import configure_node, one_run
from dicom_node.db import Database
from dicom_node.db.models import Job, Series
from dicom_node.settings import load_settings
from model.phantoms.phantom import make_phantom
from model.phantoms.writer import write_phantom_series
from tests.harness.peers import NodeProcess, Orthanc, free_port, node_env, wait_until

MB = 1024 * 1024


def write_series(
    root: Path, name: str, seed: int, slices: int, matrix: int, spacing: float | None, multiframe: bool = False
) -> tuple[Path, str, int]:
    """(folder, series UID, bytes of the CT); a folder written by an earlier run of the same
    ``--workdir`` is reused."""
    out = root / name
    if not (out.is_dir() and any(out.rglob("*.dcm"))):
        phantom = make_phantom(
            "covid", seed=seed, slices=slices, rows=matrix, columns=matrix, slice_spacing=spacing, max_slices=slices
        )
        write_phantom_series(phantom, out, multiframe=multiframe, write_masks=False)
        del phantom
    files = [p for p in out.rglob("*") if p.is_file()]
    first = next(p for p in files if p.suffix == ".dcm")
    uid = str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)
    return out, uid, sum(p.stat().st_size for p in files)


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


class Memory:
    """The node's processes (the ``up`` process and its descendants) by role, with their peaks."""

    def __init__(self, roots: list[psutil.Process]) -> None:
        self.roots = roots

    def processes(self) -> dict[str, list[psutil.Process]]:
        """``up``'s worker child (``dicom-node worker``) and its descendants, the listener
        children (multiprocessing spawn, not the resource tracker), the rest."""
        out: dict[str, list[psutil.Process]] = {"worker": [], "listener": [], "other": []}
        for root in self.roots:
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            workers = {p.pid for p in family if " worker " in f" {_cmdline(p)} " and "--parent-pid" in _cmdline(p)}
            for p in family:
                try:
                    ancestry = {a.pid for a in p.parents()} | {p.pid}
                except psutil.Error:
                    continue
                cmd = _cmdline(p)
                if ancestry & workers:
                    out["worker"].append(p)
                elif "spawn_main" in cmd and "resource_tracker" not in cmd:
                    out["listener"].append(p)
                else:
                    out["other"].append(p)
        return out

    @staticmethod
    def _status(proc: psutil.Process, field: str) -> int:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def reset_peaks(self) -> None:
        for procs in self.processes().values():
            for p in procs:
                try:
                    Path(f"/proc/{p.pid}/clear_refs").write_text("5")
                except OSError:
                    pass

    def peaks(self) -> dict[str, int]:
        """Per role the highest VmHWM of one process (bytes)."""
        return {
            role: max((self._status(p, "VmHWM") for p in procs), default=0) for role, procs in self.processes().items()
        }

    def rss(self, role: str) -> int:
        return sum(self._status(p, "VmRSS") for p in self.processes()[role])


def result_bytes(db: Database, results_dir: Path, series_uid: str) -> dict[str, int]:
    """Bytes of the series' last job's result files, per kind."""
    with db.session() as s:
        job = s.scalar(select(Job).join(Series).where(Series.series_uid == series_uid).order_by(Job.id.desc()))
        assert job is not None
        sizes: dict[str, int] = {}
        for row in job.outputs:
            path = results_dir / row["path"]
            sizes[row["kind"]] = sizes.get(row["kind"], 0) + (path.stat().st_size if path.is_file() else 0)
        return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference-slices", type=int, default=300)
    parser.add_argument("--thin-slices", type=int, default=1000)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--no-multiframe", action="store_true", help="skip the Enhanced CT")
    parser.add_argument("--idle-jobs", type=int, default=0, help="then N small jobs: the worker's idle RSS")
    parser.add_argument("--quiet-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one series' results")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the node to start")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="thin-slice-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        root = work / "series"
        m = args.matrix
        print(f"writing phantoms of {m} x {m}: {args.reference_slices} and {args.thin_slices} slices ...", flush=True)
        warmup = write_series(root, "warmup", 499, 32, m, None)
        cases = [
            ("reference", write_series(root, "reference", 500, args.reference_slices, m, 1.0)),
            ("thin", write_series(root, "thin", 501, args.thin_slices, m, 0.5)),
        ]
        if not args.no_multiframe:
            cases.append(("enhanced", write_series(root, "enhanced", 502, args.thin_slices, m, 0.5, multiframe=True)))
        small = [write_series(root, f"small-{i}", 600 + i, 32, 256, None) for i in range(args.idle_jobs)]

        run = time.strftime("%Y%m%d-%H%M%S")
        orthanc = Orthanc(work / f"orthanc-{run}").start()
        data_dir = work / f"node-data-{run}"
        env = node_env(data_dir, admin_port=free_port(), worker__device="cpu")
        port, title = configure_node(env, orthanc, args.quiet_seconds)
        node = NodeProcess(env, ["up", "--no-admin"]).start()
        settings = load_settings(data_dir=data_dir)
        db = Database(settings.effective_database_url)
        rows: list[dict[str, Any]] = []
        idle: list[int] = []
        try:
            node.wait_for_port(port, timeout=args.start_timeout)
            ready = lambda: "worker ready" in node.output() or " ready." in node.output()  # noqa: E731
            wait_until(ready, args.start_timeout, "the worker")
            assert node.proc is not None
            memory = Memory([psutil.Process(node.proc.pid)])
            print("warm-up ...", flush=True)
            one_run(db, orthanc, port, title, warmup[0], warmup[1], args.quiet_seconds, args.timeout)
            for name, (folder, uid, ct_bytes) in cases:
                memory.reset_peaks()
                r = one_run(db, orthanc, port, title, folder, uid, args.quiet_seconds, args.timeout)
                peaks = memory.peaks()
                sizes = result_bytes(db, settings.results_dir, uid)
                row = {
                    "series": name,
                    "slices": args.reference_slices if name == "reference" else args.thin_slices,
                    "instances": r["slices"],
                    "decision": r["decision"],
                    "worker_peak_mb": round(peaks["worker"] / MB),
                    "listener_peak_mb": round(peaks["listener"] / MB),
                    "seconds": r["total"],
                    "beyond_quiet": r["beyond_quiet"],
                    "stages": {k: r[k] for k in ("quiet", "queue", "load", "inference", "encoding", "export")},
                    "ct_mb": round(ct_bytes / MB, 1),
                    "results_mb": round(sum(sizes.values()) / MB, 2),
                    "results_of_ct": round(sum(sizes.values()) / ct_bytes, 4),
                    "results_by_kind_kb": {k: round(v / 1024) for k, v in sizes.items()},
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
            reference = rows[0]["seconds"]
            for row in rows:
                row["seconds_vs_reference"] = round(row["seconds"] / reference, 2)
            if small:
                time.sleep(2.0)
                idle.append(memory.rss("worker"))
                for folder, uid, _ in small:
                    one_run(db, orthanc, port, title, folder, uid, args.quiet_seconds, args.timeout)
                    time.sleep(2.0)
                    idle.append(memory.rss("worker"))
        finally:
            node.stop(timeout=60)
            db.dispose()
            orthanc.stop()
        print()
        print(
            f"{'series':10} {'slices':>6} {'worker MB':>9} {'listener MB':>11} {'s':>7} {'x ref':>6} {'results/CT':>10}"
        )
        for row in rows:
            print(
                f"{row['series']:10} {row['slices']:>6} {row['worker_peak_mb']:>9} {row['listener_peak_mb']:>11} "
                f"{row['seconds']:>7.1f} {row['seconds_vs_reference']:>6.2f} {row['results_of_ct']:>10.1%}"
            )
        if idle:
            mbs = [round(v / MB) for v in idle]
            print(f"worker idle RSS (MB) before the first of {len(small)} small jobs and after each: {mbs}")
        report = {
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "matrix": m,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "series": rows,
            "worker_idle_rss_mb": [round(v / MB) for v in idle],
            "notice": "Not for clinical use.",
        }
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
