"""Backfill: N past studies from a PACS analysed once each, while live studies go first.

Runs the real thing on this machine: ``dicom-node serve`` and one worker (one process) as
subprocesses with the SQLite database and the SQLite-file broker, a private Orthanc as the source
PACS (it knows the node's local AE as a move destination) holding ``--studies`` small CT phantoms,
``dicom-node backfill --source ORTHANC`` (C-MOVE) as a subprocess, and, once the first backfilled
job runs, ``--live`` live studies sent by storescu. A warm-up series goes first (model loaded).

It prints: the backfill command's time (query and retrieve), the time until every backfilled
series is analysed, series/h over the backfill; jobs per series (every one must be 1); for each
live study, its job's queue wait (created to started) and how many backfill jobs started between
its creation and its start (0: it went first), against the backfill jobs' median queue wait; and
the load average.

Usage (from the repository root; peers as for the tests: Orthanc, DCMTK, the test extra)::

    .venv/bin/python -m benchmarks.backfill --studies 20 --live 2

Not for clinical use: the phantoms are synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
from model.phantoms.writer import write_phantom_series
from tests.harness.peers import DICOM_NODE, NodeProcess, Orthanc, cli, free_port, node_env, storescu, wait_until

TITLE = "BACKFILLBENCH"


def series_uid(folder: Path) -> str:
    first = next(p for p in sorted(folder.iterdir()) if p.suffix == ".dcm")
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def jobs(db: Database) -> list[dict[str, Any]]:
    with db.session() as s:
        rows = s.execute(select(Job, Series.series_uid).join(Series, Series.id == Job.series_id)).all()
        return [
            {
                "id": j.id,
                "series_uid": uid,
                "status": j.status,
                "priority": j.priority,
                "created": as_utc(j.created_at).timestamp(),
                "started": as_utc(j.started_at).timestamp() if j.started_at else None,
                "finished": as_utc(j.finished_at).timestamp() if j.finished_at else None,
            }
            for j, uid in rows
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--live", type=int, default=2)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--matrix", type=int, default=96)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="backfill-bench-"))
    total = args.studies + args.live + 1
    print(f"{total} phantoms of {args.slices} x {args.matrix}^2 in {tmp} ...", file=sys.stderr)
    folders = [
        write_phantom_series("cap" if i % 2 else "normal", tmp / "phantoms" / f"ct-{i}", seed=1200 + i,
                             slices=args.slices, rows=args.matrix, columns=args.matrix, write_masks=False)
        for i in range(total)
    ]  # fmt: skip
    warm, live, past = folders[0], folders[1 : 1 + args.live], folders[1 + args.live :]
    port = free_port()
    orthanc = Orthanc(
        tmp / "orthanc", modalities={"node": [TITLE, "127.0.0.1", port], "scu": ["COVIDCTNODE", "127.0.0.1", 104]}
    )
    orthanc.start()
    for folder in past:
        assert storescu(folder, orthanc.dicom_port, called=orthanc.aet).returncode == 0
    env = node_env(
        tmp / "node", admin_port=free_port(), listener__processes=1, completion__poll_seconds=0.2,
        worker__concurrency=1, worker__localisation="cam", worker__device="cpu",
    )  # fmt: skip
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-destination", orthanc.aet, "--host", "127.0.0.1", "--port", str(orthanc.dicom_port))
    cli(env, "ae", "add-local", TITLE, "--port", str(port), "--quiet-seconds", "1", "--allow-any-source")
    db = Database(f"sqlite:///{tmp / 'node' / 'dicom-node.sqlite3'}")
    processes = [NodeProcess(env, ["serve", "--no-admin"]).start()]
    past_uids = {series_uid(f) for f in past}
    live_uids = [series_uid(f) for f in live]
    try:
        processes[0].wait_for_port(port, timeout=180)
        processes.append(NodeProcess(env, ["worker"]).start())
        assert storescu(warm, port, called=TITLE).returncode == 0
        warm_uid = series_uid(warm)
        wait_until(
            lambda: any(j["series_uid"] == warm_uid and j["finished"] for j in jobs(db)), args.timeout, "the warm-up", 1
        )
        started = time.time()
        command = subprocess.run(
            [DICOM_NODE, "backfill", "--source", orthanc.aet, "--from", "1900-01-01", "--to", "2100-12-31",
             "--modality", "CT"],
            env=env, capture_output=True, text=True, timeout=args.timeout, check=True,
        )  # fmt: skip
        retrieved_s = time.time() - started
        summary = json.loads(command.stdout.strip().splitlines()[-1])
        wait_until(
            lambda: any(j["series_uid"] in past_uids and j["started"] for j in jobs(db)),
            args.timeout,
            "a backfilled job to run",
            0.5,
        )
        for folder in live:
            assert storescu(folder, port, called=TITLE).returncode == 0
        wait_until(
            lambda: (
                sum(1 for j in jobs(db) if j["series_uid"] in past_uids | set(live_uids) and j["finished"])
                >= len(past_uids) + len(live_uids)
            ),
            args.timeout,
            "every series analysed",
            1,
        )
        analysed_s = time.time() - started
        rows = jobs(db)
    finally:
        for proc in reversed(processes):
            proc.stop(timeout=40)
        orthanc.stop()
        db.dispose()
    per_series: dict[str, int] = {}
    for j in rows:
        per_series[j["series_uid"]] = per_series.get(j["series_uid"], 0) + 1
    back = [j for j in rows if j["series_uid"] in past_uids]
    live_report = []
    for uid in live_uids:
        job = next(j for j in rows if j["series_uid"] == uid)
        overtaken = sum(1 for b in back if b["started"] and job["created"] < b["started"] < job["started"])
        live_report.append(
            {"queue_wait_s": round(job["started"] - job["created"], 1), "backfill_jobs_started_before_it": overtaken}
        )
    waits = [b["started"] - b["created"] for b in back if b["started"]]
    report = {
        "studies": len(past_uids),
        "backfill_summary": summary,
        "backfill_command_s": round(retrieved_s, 1),
        "all_analysed_s": round(analysed_s, 1),
        "backfill_series_per_hour": round(3600 * len(past_uids) / analysed_s, 1),
        "jobs_per_series": sorted(set(per_series[u] for u in past_uids | set(live_uids))),
        "backfill_priorities": sorted({b["priority"] for b in back}),
        "backfill_job_statuses": sorted({j["status"] for j in back}),
        "live": live_report,
        "backfill_queue_wait_median_s": round(statistics.median(waits), 1),
        "load_average": {"before": round(load_before[0], 1), "after": round(os.getloadavg()[0], 1)},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
