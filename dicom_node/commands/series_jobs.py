"""``dicom-node series list`` and ``dicom-node jobs list | retry | export``: what was received,
analysed and sent, and the two actions on a job (analyse again, send again)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from dicom_node.commands.common import clip, command, database_from, print_table, settings_from, utc_time
from dicom_node.errors import Conflict
from dicom_node.jobs import analyses, exports
from dicom_node.jobs.queries import job_rows, series_rows
from dicom_node.jobs.states import JobStatus, SeriesStatus
from model.contract.notice import NOT_FOR_CLINICAL_USE

# What --status takes: a series shows its own state until its job exists, then the job's.
SERIES_STATES = tuple(
    dict.fromkeys([*(st.value for st in SeriesStatus if st != SeriesStatus.COMPLETE), *(st.value for st in JobStatus)])
)
JOB_STATES = tuple(st.value for st in JobStatus)


def cmd_series_list(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args), migrate=False)
    try:
        rows = series_rows(db, args.status, args.limit)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(
        ("STATUS", "IMAGES", "RECEIVED", "AE", "PATIENT", "DESCRIPTION", "SERIES UID", "REASON"),
        (
            (
                r["status"],
                r["instances"],
                utc_time(r["last_received_at"]),
                r["local_ae"],
                r["patient_id"],
                clip(r["series_description"], 32),
                r["series_uid"],
                r["reason"],
            )
            for r in rows
        ),
        empty=f"no series{' with status ' + args.status if args.status else ''} yet: "
        "send one to a local AE (dicom-node ae list shows them)",
    )
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args), migrate=False)
    try:
        rows = job_rows(db, status=args.status, limit=args.limit)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table(
        ("JOB", "PRIORITY", "STATUS", "DECISION", "SECONDS", "ATTEMPTS", "PATIENT", "SERIES UID", "SENT TO"),
        (
            (
                r["id"],
                r["priority"],
                r["status"],
                r["decision"],
                _seconds(r),
                r["attempts"],
                r["patient_id"],
                r["series_uid"],
                ", ".join(f"{e['destination']} {e['status']}" for e in r["exports"]),
            )
            for r in rows
        ),
        empty=f"no jobs{' with status ' + args.status if args.status else ''} yet: "
        "a complete series that the AE's filters select gets one",
    )
    failed = [r for r in rows if r["status"] == "failed" and r["reason"]]
    for r in failed:
        print(f"job {r['id']} failed: {r['reason']}")
    if rows:
        print(NOT_FOR_CLINICAL_USE)
    return 0


def _seconds(row: dict[str, Any]) -> str:
    """Created to finished, for a finished job."""
    try:
        start = dt.datetime.fromisoformat(str(row["created_at"]))
        end = dt.datetime.fromisoformat(str(row["finished_at"]))
    except (TypeError, ValueError, KeyError):
        return ""
    return f"{(end - start).total_seconds():.1f}"


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args))
    try:
        message_id = analyses.requeue(db, args.job_id, reason="retry requested on the command line", force=args.force)
    except analyses.JobActive as exc:
        hint = "wait for it, or use --force to run it again anyway"
        raise Conflict(f"job {exc.job_id} is {exc.status}; {hint}") from None
    finally:
        db.dispose()
    print(json.dumps({"job_id": args.job_id, "status": "pending", "outbox_message": message_id}))
    return 0


def cmd_jobs_export(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    db = database_from(settings)
    try:
        ids = exports.reexport(
            db, args.job_id, destination=args.destination, default_outputs=settings.export.default_outputs
        )
    finally:
        db.dispose()
    print(json.dumps({"job_id": args.job_id, "exports": ids, "status": "pending"}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    series = command(
        sub, "series", "received series", "dicom-node series list --status failed", description="What the node received"
    )
    series_sub = series.add_subparsers(dest="series_command", metavar="ACTION", required=True)
    p = command(
        series_sub,
        "list",
        "series with their status and reason, newest first",
        """
        dicom-node series list
        dicom-node series list --status not_analysed      why a series was not analysed
        dicom-node series list --json | jq '.[0]'
        """,
    )
    p.add_argument("--json", action="store_true", help="JSON for programs instead of a table")
    p.add_argument(
        "--status",
        choices=SERIES_STATES,
        help="only series in this status (a series shows its job's status once it has one)",
    )
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    p.set_defaults(handler=cmd_series_list)

    jobs = command(
        sub,
        "jobs",
        "analysis jobs and their exports",
        "dicom-node jobs list",
        description="Analysis jobs and their exports",
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = command(
        jobs_sub,
        "list",
        "jobs, newest first, with decision, time taken and exports per destination",
        """
        dicom-node jobs list
        dicom-node jobs list --status failed
        dicom-node jobs list --json | jq '.[0].timings'
        """,
    )
    p.add_argument(
        "--json", action="store_true", help="JSON for programs (probabilities, timings, outputs) instead of a table"
    )
    p.add_argument("--status", choices=JOB_STATES, help="only jobs in this status")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    p.set_defaults(handler=cmd_jobs_list)
    p = command(jobs_sub, "retry", "run a job's analysis again, then export its results", "dicom-node jobs retry 12")
    p.add_argument("job_id", type=int)
    p.add_argument("--force", action="store_true", help="also when the job is pending, queued or running")
    p.set_defaults(handler=cmd_jobs_retry)
    p = command(
        jobs_sub,
        "export",
        "send a done job's results again (all destinations, or one)",
        """
        dicom-node jobs export 12
        dicom-node jobs export 12 --destination PACS
        """,
    )
    p.add_argument("job_id", type=int)
    p.add_argument("--destination", metavar="TITLE", help="only to this destination (added if the job never had it)")
    p.set_defaults(handler=cmd_jobs_export)
