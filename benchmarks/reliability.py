"""Reliability benchmark: longer runs of what tests/reliability checks.

1. A seeded fuzz run against `dicom-node serve` (SQLite, 2 listener processes): connections of
   mutated association requests, PDU headers, P-DATA fragments, command sets and data sets
   (tests.harness.hostile); then the listener processes must be the same ones, under the RSS
   bound, a real storescu must succeed, and every instance answered Success must be stored and
   indexed.
2. kill -9 rounds (tests.harness.crash) on SQLite and on PostgreSQL: the whole node killed at
   a random moment while storescu sends a 60-slice series, restarted, the series sent again:
   acknowledged instances lost, and jobs for a partial series, must both be 0.

    .venv/bin/python -m benchmarks.reliability [--fuzz-cases 5000] [--rounds 20] [--seed 1] [--no-postgresql]

Needs dcmtk and, for the PostgreSQL rounds, PostgreSQL at $TEST_POSTGRES_URL (tests/run's).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Instance
from model.phantoms.writer import write_phantom_series
from tests.harness.crash import crash_round
from tests.harness.hostile import fuzz_cases, fuzz_dataset, listener_processes, max_listener_rss, run_fuzz
from tests.harness.peers import (
    NodeProcess,
    cli,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    node_env,
    storescu,
    wait_until,
)

RSS_BOUND = 300 * 2**20


def prepare(work: Path, database_url: str | None, **settings: object) -> tuple[dict[str, str], int, str]:
    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    env = node_env(
        data_dir,
        database_url=database_url,
        admin_port=free_port(),
        listener__processes=2,
        listener__reload_seconds=0.5,
        completion__poll_seconds=0.2,
        **settings,
    )
    port = free_port()
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-local", "COVIDNODE", "--port", str(port), "--quiet-seconds", "2")
    cli(env, "ae", "add-source", "STORESCU")
    cli(env, "ae", "add-source", "FUZZER")
    return env, port, database_url or f"sqlite:///{data_dir / 'dicom-node.sqlite3'}"


def fuzz(work: Path, cases: int, seed: int) -> bool:
    env, port, url = prepare(work, None, listener__association_timeout_seconds=5, listener__network_timeout_seconds=5)
    node = NodeProcess(env, ["serve"]).start()
    try:
        node.wait_for_port(port)
        assert node.proc is not None
        pid = node.proc.pid
        before = sorted(
            p.pid
            for p in wait_until(
                lambda: listener_processes(pid) if len(listener_processes(pid)) == 2 else None, 60, "2 listeners"
            )
        )
        rss_start = max_listener_rss(pid)
        report = run_fuzz(
            port,
            fuzz_cases(seed, cases, called="COVIDNODE", calling="FUZZER", dataset=fuzz_dataset()),
            called="COVIDNODE",
            calling="FUZZER",
        )
        rss_end = max_listener_rss(pid)
        same = sorted(p.pid for p in listener_processes(pid)) == before
        series = write_phantom_series("normal", work / "series", seed=6, slices=4, rows=64, columns=64)
        real = storescu(series, port).returncode == 0
        db = Database(url)
        with db.session() as s:
            indexed = {
                r.sop_instance_uid: r.path
                for r in s.scalars(select(Instance).where(Instance.sop_instance_uid.in_(report.successes)))
            }
        db.dispose()
        storage = Path(env["DICOM_NODE_DATA_DIR"]) / "storage"
        lost = sum(1 for uid in report.successes if uid not in indexed or not (storage / indexed[uid]).is_file())
    finally:
        node.stop()
    print(
        f"fuzz, seed {seed}: {report.cases} cases in {report.seconds:.0f} s; "
        f"listener processes {'unchanged' if same else 'RESTARTED'}; "
        f"largest listener RSS {rss_start / 2**20:.0f} MB -> {rss_end / 2**20:.0f} MB (bound {RSS_BOUND / 2**20:.0f}); "
        f"{len(report.successes)} instance(s) answered Success, {lost} of them lost; {report.failures} refused; "
        f"storescu afterwards {'ok' if real else 'FAILED'}"
    )
    return same and real and lost == 0 and rss_end < RSS_BOUND


def crashes(work: Path, rounds: int, seed: int, database: str) -> bool:
    pg_name = None
    url = None
    if database == "postgresql":
        url, pg_name = create_postgres_database()
    try:
        env, port, url = prepare(work, url)
        rng = random.Random(seed)
        lost = partial = acknowledged = 0
        started = time.monotonic()
        for n in range(rounds):
            series = write_phantom_series(
                "normal", work / f"series-{n}", seed=1000 + n, slices=60, rows=128, columns=128
            )
            result = crash_round(env, port, series, url, rng)
            lost += result.lost
            partial += result.partial_jobs + (result.jobs != 1)
            acknowledged += result.acknowledged
            print(
                f"  {database} round {n + 1}: killed {result.killed_after:.2f} s into the series, "
                f"{result.acknowledged}/60 acknowledged, "
                f"{result.lost} lost, {result.jobs} job(s), {result.partial_jobs} partial",
                flush=True,
            )
    finally:
        if pg_name:
            drop_postgres_database(pg_name)
    print(
        f"kill -9 on {database}: {rounds} rounds in {time.monotonic() - started:.0f} s, "
        f"{acknowledged} instances acknowledged before the kills, {lost} lost, {partial} partial-series job(s)"
    )
    return lost == 0 and partial == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz-cases", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-postgresql", action="store_true")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        root = Path(tmp)
        if args.fuzz_cases:
            ok &= fuzz(root / "fuzz", args.fuzz_cases, args.seed)
        for database in ["sqlite"] + ([] if args.no_postgresql else ["postgresql"]):
            if args.rounds:
                ok &= crashes(root / f"crash-{database}", args.rounds, args.seed, database)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
