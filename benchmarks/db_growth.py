"""The database's growth per study, and what retention takes back of it.

Runs what benchmarks/turnaround.py runs (a private Orthanc as the PACS, the node as
``dicom-node up`` with the SQLite-file broker, DCMTK's storescu) and sends N COVID-19 phantom
series, each its own study (by default 20 of 60 slices at 128 x 128), one after another, each
analysed and its results stored in Orthanc. It measures the database before the first and after
the last:

- bytes: SQLite, the database file plus its WAL after a checkpoint (TRUNCATE); PostgreSQL
  (``--database postgresql://...``: a private database made on that server, dropped at the end),
  ``pg_database_size``;
- the rows of every table;
- the SQLite-file broker's file (``broker.sqlite3``), the same way.

Then, with the node stopped, it applies the retention policy (dicom_node.storage.retention, the
default settings) as ``serve`` would on the days it becomes due: the images' days after the
series finished (their instance rows go), the events' days (event rows), the results' days
(result folders; no row), the audit's days (audit rows), and says after each step the rows and
bytes left (the file as it is: the node never runs VACUUM, freed pages are reused by new rows;
and after a VACUUM, what the rows left take).

Usage (from the repository root; Orthanc, DCMTK and the shipped weights as for the tests)::

    .venv/bin/python -m benchmarks.db_growth --studies 20
    .venv/bin/python -m benchmarks.db_growth --studies 20 --database postgresql://postgres@127.0.0.1:5432/postgres

Not for clinical use: the phantoms are synthetic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, make_url, text

from benchmarks.turnaround import configure_node, one_run, write_series
from dicom_node.db import Database
from dicom_node.db.times import utcnow
from dicom_node.settings import Settings, load_settings
from dicom_node.storage.retention import Retention
from tests.harness.peers import (
    NodeProcess,
    Orthanc,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    node_env,
    wait_until,
)


def database_bytes(url: str, *, vacuum: bool = False) -> int:
    """SQLite: the file and its WAL after a checkpoint; PostgreSQL: pg_database_size. With
    ``vacuum``: after a VACUUM (SQLite) or VACUUM FULL (PostgreSQL) first."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                if vacuum:
                    conn.exec_driver_sql("VACUUM")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                path = Path(str(make_url(url).database))
                wal = path.with_name(path.name + "-wal")
                return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
            if vacuum:
                conn.exec_driver_sql("VACUUM FULL")
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


def table_rows(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        names = sorted(n for n in inspect(engine).get_table_names() if n != "alembic_version")
        with engine.connect() as conn:
            return {n: int(conn.execute(text(f'SELECT count(*) FROM "{n}"')).scalar_one()) for n in names}
    finally:
        engine.dispose()


def retention_steps(settings: Settings) -> list[tuple[str, float]]:
    """(what becomes due, days after the studies) in the order the policy reaches them."""
    policy = settings.retention
    steps = [
        ("images", policy.images_days),
        ("events", policy.events_days),
        ("results", policy.results_days),
        ("audit", policy.audit_days),
    ]
    return sorted(((what, float(days) + 1) for what, days in steps if days is not None), key=lambda s: s[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--seed", type=int, default=700, help="first phantom seed (one study each)")
    parser.add_argument("--quiet-seconds", type=float, default=1.0, help="the local AE's quiet period")
    parser.add_argument(
        "--database",
        help="a PostgreSQL server's URL (postgresql://user@host:5432/postgres): a private database is made there; "
        "default: SQLite under the work dir",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one study's results")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the node to start")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="db-growth-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        n, m = args.studies, args.matrix
        print(f"writing {n} phantom(s) of {args.slices} x {m} x {m} ...", flush=True)
        series = [write_series(work / "series", args.seed + i, args.slices, m) for i in range(n)]

        private = create_postgres_database(args.database, "db_growth") if args.database else None
        run = time.strftime("%Y%m%d-%H%M%S")
        data_dir = work / f"node-data-{run}"
        orthanc = Orthanc(work / f"orthanc-{run}").start()
        database_url = private[0] if private else None
        env = node_env(data_dir, admin_port=free_port(), worker__device="cpu", database_url=database_url)
        settings = load_settings(data_dir=data_dir, database_url=database_url)
        url = settings.effective_database_url
        kind = make_url(url).get_backend_name()
        node: NodeProcess | None = None
        db = Database(url)
        try:
            port, title = configure_node(env, orthanc, args.quiet_seconds)
            up = node = NodeProcess(env, ["up", "--no-admin"]).start()
            up.wait_for_port(port, timeout=args.start_timeout)
            wait_until(lambda: "worker ready" in up.output(), args.start_timeout, "the worker")
            broker = data_dir / "broker.sqlite3"  # the SQLite-file broker's
            before_bytes, before_rows, before_broker = (
                database_bytes(url),
                table_rows(url),
                database_bytes(f"sqlite:///{broker}"),
            )
            t0 = time.monotonic()
            for i, (folder, uid) in enumerate(series, start=1):
                r = one_run(db, orthanc, port, title, folder, uid, args.quiet_seconds, args.timeout)
                print(f"study {i}/{n}: {r['decision']}, {r['objects']} objects, {r['total']:.1f} s", flush=True)
            seconds = time.monotonic() - t0
            after_bytes, after_rows, after_broker = (
                database_bytes(url),
                table_rows(url),
                database_bytes(f"sqlite:///{broker}"),
            )
            up.stop(timeout=60)

            retention = Retention(db, settings, actor="benchmark")
            now = utcnow()
            steps: list[dict[str, Any]] = []
            for what, days in retention_steps(settings):
                report = retention.run_once(now=now + dt.timedelta(days=days))
                rows = table_rows(url)
                steps.append(
                    {
                        "due": what,
                        "days": days,
                        "series_purged": len(report.purged),
                        "results_removed": report.results_purged,
                        "events_pruned": report.events_pruned,
                        "audit_pruned": report.audit_pruned,
                        "bytes": database_bytes(url),
                        "bytes_after_vacuum": database_bytes(url, vacuum=True),
                        "rows": rows,
                    }
                )
        finally:
            if node is not None:
                node.stop(timeout=60)
            db.dispose()
            orthanc.stop()
            if private:
                drop_postgres_database(private[1], args.database)

    tables = sorted(after_rows)
    report_out = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "database": kind,
        "studies": n,
        "slices": args.slices,
        "matrix": m,
        "seconds": round(seconds, 1),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "bytes_before": before_bytes,
        "bytes_after": after_bytes,
        "bytes_per_study": round((after_bytes - before_bytes) / n),
        "broker_bytes_before": before_broker,
        "broker_bytes_after": after_broker,
        "rows_per_study": {t: round((after_rows[t] - before_rows.get(t, 0)) / n, 2) for t in tables},
        "rows_before": before_rows,
        "rows_after": after_rows,
        "retention": steps,
    }
    print(json.dumps(report_out, indent=2))
    print(f"\n{kind}, {n} studies of {args.slices} x {m} x {m} ({seconds:.0f} s):")
    print(
        f"  database {before_bytes / 2**20:.2f} MB -> {after_bytes / 2**20:.2f} MB: "
        f"{report_out['bytes_per_study'] / 1024:.1f} KB a study"
    )
    print(f"  SQLite-file broker {before_broker / 2**20:.2f} MB -> {after_broker / 2**20:.2f} MB")
    heads = ["table", "before", "after", "per study"] + [f"+{s['days']:g} d ({s['due']})" for s in steps]
    print("  " + " | ".join(heads))
    for t in tables:
        cells = [t, str(before_rows.get(t, 0)), str(after_rows[t]), f"{report_out['rows_per_study'][t]:g}"]
        cells += [str(s["rows"].get(t, 0)) for s in steps]
        print("  " + " | ".join(cells))
    for s in steps:
        print(
            f"  +{s['days']:g} d ({s['due']} due): {s['series_purged']} series' images purged, results of "
            f"{s['results_removed']} job(s) removed, {s['events_pruned']} event(s) and {s['audit_pruned']} audit "
            f"entr(ies) pruned; database {s['bytes'] / 2**20:.2f} MB, {s['bytes_after_vacuum'] / 2**20:.2f} MB "
            "after a VACUUM"
        )
    if args.json:
        args.json.write_text(json.dumps(report_out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
