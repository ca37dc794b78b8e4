"""Triage: a STAT series behind a backlog, routine throughput, and the time to a notification.

Runs the real thing on this machine: ``dicom-node serve`` and one worker (one process) as
subprocesses with the SQLite database and the SQLite-file broker, a private Orthanc as the PACS,
DCMTK's storescu as the scanners, python-hl7's MLLP server as the RIS (tests/harness/receivers.py)
with a notification rule that sends every result to it. Small CAP phantoms (by default 24 slices
of 128 x 128) keep each job a few seconds. A warm-up series goes first (model loaded).

Three phases, one after the other on the same node:

1. reference: a STAT series (calling AE ER_CT, a priority rule makes it stat) sent alone;
2. backlog: ``--backlog`` routine series sent back to back; once the worker runs the first and
   the others wait, the STAT series is sent last;
3. routine alone: the same number of routine series, no STAT.

It prints, in seconds: the STAT series' last C-STORE response to its results stored in PACS
(the job's last export done) with and without the backlog, and their ratio; routine throughput
(series/h from the first routine job's start to the last one's end, the STAT job's own run time
taken out) with the STAT series and without, and their ratio; from each job's end to its HL7
message received by the RIS, p50 and p95 over every job of the run; and the load average.

Usage (from the repository root; peers as for the tests: Orthanc, DCMTK, the test extra)::

    .venv/bin/python -m benchmarks.triage --backlog 20 [--phantoms ~/triage-phantoms]

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

import numpy as np
import pydicom
from sqlalchemy import func, select

from dicom_node.db import Database
from dicom_node.db.models import Export, Job, Notification, Series
from dicom_node.db.times import as_utc
from dicom_node.jobs.states import ExportStatus, JobStatus
from model.phantoms.writer import write_phantom_series
from tests.harness.peers import NodeProcess, Orthanc, cli, free_port, node_env, storescu, wait_until
from tests.harness.receivers import MLLPReceiver

TITLE = "TRIAGEBENCH"


def series_uids(folder: Path) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a series folder."""
    first = next(p for p in sorted(folder.iterdir()) if p.suffix == ".dcm")
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _job_of(db: Database, series_uid: str) -> Job | None:
    with db.session() as s:
        row = s.scalar(select(Job).join(Series, Series.id == Job.series_id).where(Series.series_uid == series_uid))
        if row is not None:
            s.expunge(row)
        return row


def _results_in_pacs(db: Database, series_uid: str) -> dt.datetime | None:
    """When the job's last export (to PACS) was done; None until then. A job or an export that
    failed for good ends the run (waiting would only reach the timeout)."""
    with db.session() as s:
        job = s.scalar(select(Job).join(Series, Series.id == Job.series_id).where(Series.series_uid == series_uid))
        if job is not None and job.status == JobStatus.FAILED.value:
            raise SystemExit(f"job {job.id} failed: {job.reason}")
        if job is None or job.status != JobStatus.DONE.value:
            return None
        exports = list(s.scalars(select(Export).where(Export.job_id == job.id)))
        failed = [e for e in exports if e.status == ExportStatus.FAILED.value]
        if failed:
            raise SystemExit(f"job {job.id}'s export to {failed[0].title} failed: {failed[0].last_error}")
        if not exports or any(e.status != ExportStatus.DONE.value for e in exports):
            return None
        return max(as_utc(e.finished_at) for e in exports if e.finished_at is not None)


def _undelivered(db: Database) -> int:
    """Notifications not yet delivered. A read-only connection, closed after: on SQLite a
    connection left open in its transaction would hold the write lock the node needs."""
    with db.reader() as conn:
        count = select(func.count()).select_from(Notification).where(Notification.status != "done")
        return int(conn.execute(count).scalar_one())


def _send(port: int, folder: Path, calling: str) -> float:
    """storescu; returns the time of the last C-STORE response (storescu's end)."""
    proc = storescu(folder, port, calling=calling, called=TITLE)
    if proc.returncode != 0:
        raise SystemExit(f"storescu failed: {proc.stderr}")
    return time.time()


def stat_latency(db: Database, port: int, folder: Path, timeout: float) -> float:
    sent = _send(port, folder, "ER_CT")
    uid = series_uids(folder)[1]
    done = wait_until(lambda: _results_in_pacs(db, uid), timeout, "the STAT results in PACS", interval=0.2)
    return done.timestamp() - sent


def routine_throughput(db: Database, uids: list[str], minus: float = 0.0) -> float:
    """Series per hour from the first routine job's start to the last one's end, less ``minus`` s."""
    jobs = [j for j in (_job_of(db, u) for u in uids) if j is not None]
    start = min(as_utc(j.started_at) for j in jobs if j.started_at is not None)
    end = max(as_utc(j.finished_at) for j in jobs if j.finished_at is not None)
    return len(jobs) / max(1e-6, (end - start).total_seconds() - minus) * 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=20)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--phantoms", type=Path, help="a folder to keep the phantoms in (written once, reused)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-"))
    n = args.backlog
    phantoms = args.phantoms or tmp / "phantoms"
    print(f"{2 * n + 3} phantoms of {args.slices} x {args.matrix}^2 in {phantoms} ...", file=sys.stderr)
    folders = [
        phantoms / f"ct-{i}" if (phantoms / f"ct-{i}").is_dir() else write_phantom_series(
            "cap", phantoms / f"ct-{i}", seed=900 + i, slices=args.slices, rows=args.matrix, columns=args.matrix,
            write_masks=False,
        )
        for i in range(2 * n + 3)
    ]  # fmt: skip
    warm, stat_alone, stat_behind = folders[:3]
    backlog, alone = folders[3 : 3 + n], folders[3 + n :]
    orthanc = Orthanc(tmp / "orthanc").start()
    ris = MLLPReceiver().start()
    port = free_port()
    env = node_env(
        tmp / "node",
        admin_port=free_port(),
        listener__processes=1,
        completion__poll_seconds=0.2,
        worker__concurrency=1,
        worker__localisation="cam",
        worker__device="cpu",
        notify__poll_seconds=0.1,
    )
    cli(env, "db", "upgrade")
    # The destination's title is the one Orthanc answers to: it rejects any other called AE title.
    cli(env, "ae", "add-destination", orthanc.aet, "--host", "127.0.0.1", "--port", str(orthanc.dicom_port))
    cli(env, "ae", "add-local", TITLE, "--port", str(port), "--quiet-seconds", "1", "--allow-any-source",
        "--send-results-to", orthanc.aet)  # fmt: skip
    cli(env, "triage", "add-priority-rule", "emergency", "--priority", "stat", "--calling-ae", "ER_CT")
    cli(env, "triage", "add-channel", "ris", "--kind", "hl7", "--host", "127.0.0.1", "--port", str(ris.port))
    cli(env, "triage", "add-notify-rule", "everything", "--channels", "ris")
    db = Database(f"sqlite:///{tmp / 'node' / 'dicom-node.sqlite3'}")
    processes = [NodeProcess(env, ["serve", "--no-admin"]).start()]
    try:
        processes[0].wait_for_port(port, timeout=120)
        processes.append(NodeProcess(env, ["worker"]).start())
        _send(port, warm, "STORESCU")
        wait_until(lambda: _results_in_pacs(db, series_uids(warm)[1]), args.timeout, "the warm-up", interval=0.5)

        reference = stat_latency(db, port, stat_alone, args.timeout)
        print(f"STAT alone: {reference:.1f} s", file=sys.stderr)

        backlog_uids = [series_uids(f)[1] for f in backlog]
        for folder in backlog:
            _send(port, folder, "STORESCU")

        def waiting() -> bool:
            with db.session() as s:
                running = s.scalar(select(func.count()).select_from(Job).where(Job.status == "running"))
                queued = s.scalar(select(func.count()).select_from(Job).where(Job.status.in_(["pending", "queued"])))
            return bool(running) and (queued or 0) >= n - 2

        wait_until(waiting, args.timeout, "the backlog to wait", interval=0.2)
        behind = stat_latency(db, port, stat_behind, args.timeout)
        print(f"STAT behind {n}: {behind:.1f} s", file=sys.stderr)
        wait_until(lambda: all(_results_in_pacs(db, u) for u in backlog_uids), args.timeout, "the backlog", interval=1)
        stat_job = _job_of(db, series_uids(stat_behind)[1])
        assert stat_job is not None and stat_job.started_at and stat_job.finished_at
        stat_run = (as_utc(stat_job.finished_at) - as_utc(stat_job.started_at)).total_seconds()
        with_stat = routine_throughput(db, backlog_uids, minus=stat_run)

        alone_uids = [series_uids(f)[1] for f in alone]
        for folder in alone:
            _send(port, folder, "STORESCU")
        wait_until(lambda: all(_results_in_pacs(db, u) for u in alone_uids), args.timeout, "routine", interval=1)
        without_stat = routine_throughput(db, alone_uids)

        wait_until(lambda: _undelivered(db) == 0, 120, "every notification delivered")
        with db.session() as s:
            ended = {
                note.message_id: as_utc(job.finished_at).timestamp()
                for note, job in s.execute(select(Notification, Job).join(Job, Job.id == Notification.job_id))
                if job.finished_at is not None
            }
        first_arrival: dict[str, float] = {}
        for message in ris.received:
            first_arrival.setdefault(message.ident, message.at)
        delays = [first_arrival[m] - t for m, t in ended.items() if m in first_arrival]
    finally:
        for proc in reversed(processes):
            proc.stop(timeout=40)
        ris.stop()
        orthanc.stop()
        db.dispose()
    load_after = os.getloadavg()
    report: dict[str, Any] = {
        "stat_last_image_to_pacs_s": {"alone": round(reference, 2), "behind_backlog": round(behind, 2)},
        "stat_ratio": round(behind / reference, 2),
        "backlog": n,
        "routine_series_per_hour": {"with_stat": round(with_stat, 1), "without_stat": round(without_stat, 1)},
        "routine_throughput_ratio": round(with_stat / without_stat, 3),
        "notification_s": {
            "count": len(delays),
            "p50": round(float(np.percentile(delays, 50)), 3),
            "p95": round(float(np.percentile(delays, 95)), 3),
            "max": round(max(delays), 3),
            "mean": round(statistics.mean(delays), 3),
        },
        "phantoms": f"cap, {args.slices} x {args.matrix} x {args.matrix}",
        "load_average": {"before": [round(v, 1) for v in load_before], "after": [round(v, 1) for v in load_after]},
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
