"""Turnaround: from the last C-STORE response of a series to the last result stored in PACS.

Runs the real thing on this machine: a private Orthanc as the PACS (Debian package), the node as
``dicom-node up`` (embedded SQLite database and SQLite-file broker: the README's first command)
or as ``serve`` + ``worker`` with the given database and broker, DCMTK's storescu sending a
COVID-19 phantom (model.phantoms; by default 128 slices of 512 x 512). A warm-up series of 32
slices goes first, so the numbers are those of a running node (model loaded).

For each run it prints, in seconds:

- quiet: last C-STORE response -> the series completed (the AE's quiet period plus the
  completion loop's polling);
- queue: completed -> the worker claimed the job (outbox relay, broker, claim);
- load: reading the series from storage; inference: the predictor (lungs, network,
  localisation); encoding: building and writing SR, SC, SEG, KOS, PM;
- worker_other: the rest of the worker's time on the job (claim, artefacts, commit);
- export: job done -> the last result stored in Orthanc (outbox relay, broker, C-STORE);
- total, and beyond_quiet = total - the configured quiet period (the target is <= 30 s on the
  2-core CPU).

Usage (from the repository root; peers as for the tests: Orthanc, DCMTK, the shipped weights)::

    .venv/bin/python -m benchmarks.turnaround --runs 3
    .venv/bin/python -m benchmarks.turnaround --mode serve+worker --broker-url redis://127.0.0.1:6379/15

Not for clinical use: the phantoms are synthetic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Job, Series
from dicom_node.db.times import as_utc
from dicom_node.settings import load_settings
from model.phantoms.writer import write_phantom_series
from tests.harness.peers import NodeProcess, Orthanc, cli, free_port, node_env, storescu, wait_until

STAGES = ("quiet", "queue", "load", "inference", "encoding", "worker_other", "export", "total", "beyond_quiet")


def _seconds(later: dt.datetime, earlier: dt.datetime) -> float:
    return (as_utc(later) - as_utc(earlier)).total_seconds()


def write_series(root: Path, seed: int, slices: int, matrix: int) -> tuple[Path, str]:
    out = write_phantom_series(
        "covid", root / f"covid-{seed}-{slices}", seed=seed, slices=slices, rows=matrix, columns=matrix
    )

    first = next(p for p in out.iterdir() if p.suffix == ".dcm")
    return out, str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def configure_node(env: dict[str, str], orthanc: Orthanc, quiet_seconds: float) -> tuple[int, str]:
    """A fresh node's database, Orthanc as its destination and a local AE on a free port that sends
    its results there and takes any caller; returns the AE's port and title."""
    port, title = free_port(), "COVIDNODE"
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-destination", "ORTHANC", "--host", "127.0.0.1", "--port", str(orthanc.dicom_port))
    cli(
        env,
        "ae",
        "add-local",
        title,
        "--port",
        str(port),
        "--quiet-seconds",
        str(quiet_seconds),
        "--send-results-to",
        "ORTHANC",
        "--allow-any-source",
    )
    return port, title


def one_run(
    db: Database,
    orthanc: Orthanc,
    node_port: int,
    title: str,
    folder: Path,
    series_uid: str,
    quiet: float,
    timeout: float,
) -> dict[str, Any]:
    """Send one series, wait for its results in Orthanc, return the stage times."""
    before = int(orthanc.get("/statistics")["CountInstances"])
    proc = storescu(folder, node_port, called=title)
    t0 = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {proc.stdout}\n{proc.stderr}")
    expected: int | None = None
    deadline = time.monotonic() + timeout
    t_end = None
    while time.monotonic() < deadline:
        if expected is None:
            with db.session() as s:
                job = s.scalar(select(Job).join(Series).where(Series.series_uid == series_uid).order_by(Job.id.desc()))
                if job is not None and job.status == "failed":
                    raise RuntimeError(f"job {job.id} failed: {job.reason}")
                if job is not None and job.status == "done":
                    expected = len(job.outputs)
        if expected is not None and int(orthanc.get("/statistics")["CountInstances"]) >= before + expected:
            t_end = time.time()
            break
        time.sleep(0.05)
    if t_end is None:
        raise RuntimeError(f"no results in Orthanc after {timeout:.0f} s")
    with db.session() as s:
        series = s.scalar(select(Series).where(Series.series_uid == series_uid))
        assert series is not None and series.completed_at
        job = s.scalar(select(Job).where(Job.series_id == series.id).order_by(Job.id.desc()))
        assert job is not None and job.started_at and job.finished_at
        start = dt.datetime.fromtimestamp(t0, dt.timezone.utc)
        end = dt.datetime.fromtimestamp(t_end, dt.timezone.utc)
        timings = job.timings
        load = float(timings.get("load", 0.0)) + float(timings.get("model_load", 0.0))
        inference = float(timings.get("inference", 0.0))
        encoding = float(timings.get("encoding", 0.0))
        worked = _seconds(job.finished_at, job.started_at)
        total = _seconds(end, start)
        return {
            "series_uid": series_uid,
            "job_id": job.id,
            "decision": job.decision,
            "objects": len(job.outputs),
            "slices": series.instances,
            "quiet": round(_seconds(series.completed_at, start), 3),
            "queue": round(_seconds(job.started_at, series.completed_at), 3),
            "load": round(load, 3),
            "inference": round(inference, 3),
            "encoding": round(encoding, 3),
            "worker_other": round(worked - load - inference - encoding, 3),
            "export": round(_seconds(end, job.finished_at), 3),
            "total": round(total, 3),
            "beyond_quiet": round(total - quiet, 3),
            "inference_stages": timings.get("stages", {}),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=500, help="first phantom seed (one series per run)")
    parser.add_argument(
        "--quiet-seconds", type=float, default=5.0, help="the local AE's quiet period (the product default is 5)"
    )
    parser.add_argument("--mode", choices=["up", "serve+worker"], default="up")
    parser.add_argument("--database-url", help="serve+worker: database (default: SQLite under the work dir)")
    parser.add_argument("--broker-url", help="serve+worker: broker (default: the SQLite-file broker)")
    parser.add_argument("--weights", type=Path, help="weights folder (default: the shipped model/weights)")
    parser.add_argument("--localisation", choices=["auto", "cam", "cam+ig"], help="default: the weights' own choice")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for one run's results")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="turnaround-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(
            f"writing {args.runs} phantom(s) of {args.slices} x {args.matrix} x {args.matrix} and a warm-up series ...",
            flush=True,
        )
        warmup = write_series(work / "series", args.seed - 1, 32, args.matrix)
        series = [write_series(work / "series", args.seed + i, args.slices, args.matrix) for i in range(args.runs)]

        orthanc = Orthanc(work / "orthanc").start()
        data_dir = work / "node-data"
        settings: dict[str, Any] = {"admin_port": free_port(), "worker__device": args.device}
        if args.mode == "serve+worker":
            settings.update(database_url=args.database_url, broker_url=args.broker_url)
        if args.weights:
            settings["worker__weights_dir"] = str(args.weights.resolve())
        if args.localisation:
            settings["worker__localisation"] = args.localisation
        env = node_env(data_dir, **settings)
        port, title = configure_node(env, orthanc, args.quiet_seconds)
        procs = (
            [NodeProcess(env, ["up", "--no-admin"]).start()]
            if args.mode == "up"
            else [
                NodeProcess(env, ["serve", "--no-admin"]).start(),
                NodeProcess(env, ["worker"]).start(),
            ]
        )
        db_url = settings.get("database_url") or load_settings(data_dir=data_dir).effective_database_url
        db = Database(db_url)
        results = []
        try:
            procs[0].wait_for_port(port, timeout=120)
            wait_until(
                lambda: any("worker ready" in p.output() or " ready." in p.output() for p in procs),
                300,
                "the worker to be ready",
            )
            print("warm-up ...", flush=True)
            one_run(db, orthanc, port, title, warmup[0], warmup[1], args.quiet_seconds, args.timeout)
            for i, (folder, uid) in enumerate(series, start=1):
                r = one_run(db, orthanc, port, title, folder, uid, args.quiet_seconds, args.timeout)
                results.append(r)
                print(
                    f"run {i}: "
                    + "  ".join(f"{k} {r[k]:.2f}" for k in STAGES)
                    + f"  ({r['decision']}, {r['objects']} objects)",
                    flush=True,
                )
        finally:
            for p in reversed(procs):
                p.stop(timeout=60)
            db.dispose()
            orthanc.stop()
        summary = {k: round(statistics.median(r[k] for r in results), 3) for k in STAGES}
        report = {
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "mode": args.mode,
            "slices": args.slices,
            "matrix": args.matrix,
            "quiet_seconds": args.quiet_seconds,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "runs": results,
            "median": summary,
            "notice": "Not for clinical use.",
        }
        print("median: " + "  ".join(f"{k} {summary[k]:.2f}" for k in STAGES))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
