"""Throughput and queue wait with one and two workers: series per hour, and how long a series
waits in the queue when 20 arrive at once.

Runs the real thing on this machine: PostgreSQL (a fresh database), a private RabbitMQ node
(tests.harness.brokers), a private Orthanc as the PACS, ``dicom-node serve`` with its admin
app and workers as subprocesses; by default each worker has a data dir of its own and fetches the
series from the node over HTTP (``--shared`` gives them the node's data dir instead). Phantom
chest CT series (model.phantoms, CAP) are sent with DCMTK's storescu; CAM localisation.

Three phases, each after a warm-up series per worker (model loaded):

1. one worker, N series sent one after another as fast as storescu sends: series per hour from the
   first C-STORE to the last result stored in Orthanc (the reference);
2. two workers, N other series the same way: series per hour, and the ratio to phase 1;
3. two workers, a burst of 20 series sent four at a time: the queue wait of each job (series
   complete -> a worker claims it: ``Job.timings.queue_wait``), median, 95th percentile and
   maximum, and the time to the last result.

It also prints the worker time per series (fetch, load, inference, encoding, upload) so that a
site can size its workers: workers needed = studies per hour x seconds per series / 3600 / the
share of a worker's time that is busy.

On a 2-core machine the node, the workers, PostgreSQL, RabbitMQ and Orthanc share the same cores,
so two workers cannot be twice as fast; the ratio says how much of the work is the workers'.

    .venv/bin/python -m benchmarks.throughput                     # N=6, 48 x 256 x 256 series
    .venv/bin/python -m benchmarks.throughput --series 10 --slices 128 --matrix 512 --json out.json

Not for clinical use: the phantoms are synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import func, select

from dicom_node.db import Database
from dicom_node.db.models import Export, Job, Series
from dicom_node.db.times import as_utc
from model.phantoms.writer import write_phantom_series
from tests.harness.brokers import PrivateRabbitMQ
from tests.harness.peers import (
    NodeProcess,
    Orthanc,
    cli,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    node_env,
    storescu,
    wait_until,
)

TOKEN = "throughput-benchmark-token-0123456789"


def write_series(root: Path, seed: int, slices: int, matrix: int) -> tuple[Path, str]:
    out = write_phantom_series("cap", root / f"cap-{seed}", seed=seed, slices=slices, rows=matrix, columns=matrix)
    first = next(p for p in out.iterdir() if p.suffix == ".dcm")
    return out, str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def _seconds(later: Any, earlier: Any) -> float:
    a, b = as_utc(later), as_utc(earlier)
    assert a is not None and b is not None
    return (a - b).total_seconds()


class Bench:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.db_url, self.db_name = create_postgres_database()
        self.rabbitmq = PrivateRabbitMQ(work / "rabbitmq").start()
        self.orthanc = Orthanc(work / "orthanc").start()
        self.admin_port, self.port = free_port(), free_port()
        settings: dict[str, Any] = dict(
            database_url=self.db_url,
            broker_url=self.rabbitmq.url,
            admin_port=self.admin_port,
            remote__token=TOKEN,
            listener__processes=1,
            completion__poll_seconds=0.2,
            worker__localisation="cam",
            worker__device=args.device,
            worker__concurrency=1,
        )
        self.env = node_env(work / "node-data", **settings)
        cli(self.env, "db", "upgrade")
        cli(self.env, "ae", "add-destination", "ORTHANC", "--host", "127.0.0.1", "--port", str(self.orthanc.dicom_port))
        cli(
            self.env,
            "ae",
            "add-local",
            "COVIDNODE",
            "--port",
            str(self.port),
            "--quiet-seconds",
            str(args.quiet_seconds),
            "--send-results-to",
            "ORTHANC",
            "--allow-any-source",
        )
        self.serve = NodeProcess(self.env, ["serve"]).start()
        self.serve.wait_for_port(self.port, timeout=120)
        self.workers: list[NodeProcess] = []
        self.db = Database(self.db_url)

    def add_worker(self, threads: int) -> NodeProcess:
        env = dict(self.env, DICOM_NODE_WORKER__TORCH_THREADS=str(threads))
        if not self.args.shared:
            data_dir = self.work / f"worker-{len(self.workers) + 1}"
            data_dir.mkdir(parents=True, exist_ok=True)
            env.update(
                DICOM_NODE_DATA_DIR=str(data_dir),
                DICOM_NODE_REMOTE__NODE_URL=f"http://127.0.0.1:{self.admin_port}",
                DICOM_NODE_REMOTE__TOKEN=TOKEN,
            )
        proc = NodeProcess(env, ["worker"]).start()
        wait_until(lambda: " ready." in proc.output(), 300, "the worker to be ready")
        self.workers.append(proc)
        return proc

    def send(self, batch: list[tuple[Path, str]], parallel: int = 1) -> None:
        with ThreadPoolExecutor(parallel) as pool:
            for proc in pool.map(lambda s: storescu(s[0], self.port), batch):
                if proc.returncode != 0:
                    raise RuntimeError(f"storescu failed: {proc.stderr}")

    def wait_done(self, uids: list[str], timeout: float) -> list[dict[str, Any]]:
        def done() -> list[dict[str, Any]] | None:
            with self.db.session() as s:
                rows = s.execute(select(Job, Series).join(Series).where(Series.series_uid.in_(uids))).all()
                if any(j.status == "failed" for j, _ in rows):
                    raise RuntimeError(f"a job failed: {[j.reason for j, _ in rows if j.status == 'failed']}")
                if len(rows) < len(uids) or any(j.status != "done" for j, _ in rows):
                    return None
                ids = [j.id for j, _ in rows]
                open_exports = s.scalar(
                    select(func.count()).select_from(Export).where(Export.job_id.in_(ids), Export.status != "done")
                )
                if open_exports:
                    return None
                last = {e.job_id: e.finished_at for e in s.scalars(select(Export).where(Export.job_id.in_(ids)))}
                return [
                    {
                        "job": j.id,
                        "worker": j.worker,
                        "timings": dict(j.timings or {}),
                        "completed_at": as_utc(sr.completed_at),
                        "exported_at": as_utc(last[j.id]),
                        "worked": _seconds(j.finished_at, j.started_at),
                    }
                    for j, sr in rows
                ]

        result: list[dict[str, Any]] = wait_until(
            done, timeout, f"{len(uids)} series to be analysed and exported", interval=0.5
        )
        return result

    def phase(self, name: str, batch: list[tuple[Path, str]], parallel: int) -> dict[str, Any]:
        start = time.time()
        self.send(batch, parallel)
        sent = time.time()
        jobs = self.wait_done([u for _, u in batch], self.args.timeout)
        end = max(j["exported_at"] for j in jobs).timestamp()
        waits = sorted(float(j["timings"].get("queue_wait", 0.0)) for j in jobs)
        work = [
            sum(
                float(j["timings"].get(k, 0.0))
                for k in ("fetch", "load", "model_load", "inference", "encoding", "upload")
            )
            for j in jobs
        ]
        out = {
            "phase": name,
            "series": len(batch),
            "workers": len(self.workers),
            "send_seconds": round(sent - start, 2),
            "elapsed_seconds": round(end - start, 2),
            "series_per_hour": round(len(batch) * 3600 / (end - start), 1),
            "queue_wait_median": round(statistics.median(waits), 2),
            "queue_wait_p95": round(waits[max(0, int(0.95 * len(waits)) - 1)], 2),
            "queue_wait_max": round(waits[-1], 2),
            "worker_seconds_per_series_median": round(statistics.median(work), 2),
            "workers_used": len({j["worker"].split(":")[0] + ":" + j["worker"].split(":")[-1] for j in jobs}),
            "stages_median": {
                k: round(statistics.median(float(j["timings"].get(k, 0.0)) for j in jobs), 3)
                for k in ("fetch", "load", "inference", "encoding", "upload")
            },
        }
        print(json.dumps(out), flush=True)
        return out

    def close(self) -> None:
        for p in [*reversed(self.workers), self.serve]:
            p.stop(timeout=60)
        self.db.dispose()
        self.orthanc.stop()
        self.rabbitmq.remove()
        drop_postgres_database(self.db_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=6, help="series per throughput phase (N)")
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--burst-slices", type=int, default=24)
    parser.add_argument("--quiet-seconds", type=float, default=2.0)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    parser.add_argument("--shared", action="store_true", help="workers on the node's data dir (no fetch)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # SIGTERM ends the run through the finally blocks: servers and workers stopped, files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        work = Path(tmp)
        print(
            f"writing {2 * args.series} series of {args.slices} x {args.matrix}^2, "
            f"{args.burst} of {args.burst_slices} slices, and warm-ups ...",
            flush=True,
        )
        warm = [write_series(work / "series", 700 + i, 16, args.matrix) for i in range(2)]
        one = [write_series(work / "series", 710 + i, args.slices, args.matrix) for i in range(args.series)]
        two = [write_series(work / "series", 760 + i, args.slices, args.matrix) for i in range(args.series)]
        burst = [write_series(work / "series", 810 + i, args.burst_slices, args.matrix) for i in range(args.burst)]
        bench = Bench(work, args)
        results = []
        try:
            bench.add_worker(threads=cores)
            bench.phase("warm-up", warm[:1], 1)
            results.append(bench.phase("1 worker", one, 1))
            # Two workers share the cores: each gets half (the first restarts with half too).
            bench.workers.pop().stop(timeout=60)
            bench.add_worker(threads=max(1, cores // 2))
            bench.add_worker(threads=max(1, cores // 2))
            bench.phase("warm-up", warm, 2)
            results.append(bench.phase("2 workers", two, 1))
            results.append(bench.phase(f"burst of {args.burst}, 2 workers", burst, 4))
        finally:
            bench.close()
    ratio = results[1]["series_per_hour"] / results[0]["series_per_hour"]
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "cpus": cores,
        "load_average": os.getloadavg(),
        "remote_workers": not args.shared,
        "phases": results,
        "two_workers_over_one": round(ratio, 2),
        "notice": "Not for clinical use.",
    }
    print(
        f"1 worker {results[0]['series_per_hour']:.0f} series/h; "
        f"2 workers {results[1]['series_per_hour']:.0f} series/h (x{ratio:.2f}); "
        f"burst of {args.burst}: queue wait median {results[2]['queue_wait_median']:.1f} s, "
        f"p95 {results[2]['queue_wait_p95']:.1f} s, max {results[2]['queue_wait_max']:.1f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
