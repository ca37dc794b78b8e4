"""``dicom-node series list`` and ``dicom-node jobs list | retry | export``: what was received,
analysed and sent, and the two actions on a job (analyse again, send again)."""

from __future__ import annotations

import argparse
import json

from dicom_node.commands.common import database_from, fail, settings_from
from dicom_node.jobs import analyses, exports
from dicom_node.jobs.queries import job_rows, series_rows
from model.contract.notice import NOT_FOR_CLINICAL_USE


def cmd_series_list(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args))
    rows = series_rows(db, args.status, args.limit)
    db.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['status']:<13} {r['instances']:>5}  {r['series_uid']}  {r['series_description'][:30]:<30} {r['reason']}")
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args))
    try:
        rows = job_rows(db, status=args.status, limit=args.limit)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        sent = ", ".join(f"{e['destination']}:{e['status']}({e['attempts']})" for e in r["exports"]) or "-"
        print(f"{r['id']:>6} {r['status']:<11} {r['decision'] or '-':<12} attempts {r['attempts']}  {r['series_uid']}  exports {sent}")
        if r["reason"]:
            print(f"       {r['reason']}")
    print(NOT_FOR_CLINICAL_USE)
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args))
    try:
        message_id = analyses.requeue(db, args.job_id, reason="retry requested on the command line", force=args.force)
    except analyses.JobNotFound as exc:
        return fail(str(exc))
    except analyses.JobActive as exc:
        return fail(f"{exc}; wait for it, or use --force to run it again anyway")
    finally:
        db.dispose()
    print(json.dumps({"job_id": args.job_id, "status": "pending", "outbox_message": message_id}))
    return 0


def cmd_jobs_export(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    db = database_from(settings)
    try:
        ids = exports.reexport(db, args.job_id, destination=args.destination, default_outputs=settings.export.default_outputs)
    except ValueError as exc:
        return fail(str(exc))
    finally:
        db.dispose()
    print(json.dumps({"job_id": args.job_id, "exports": ids, "status": "pending"}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    series = sub.add_parser("series", help="received series")
    series_sub = series.add_subparsers(dest="series_command", required=True)
    p = series_sub.add_parser("list", help="series with their status and reason, newest first")
    p.add_argument("--json", action="store_true")
    p.add_argument("--status", help="only series in this status")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(handler=cmd_series_list)

    jobs = sub.add_parser("jobs", help="analysis jobs and their exports")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = jobs_sub.add_parser("list", help="jobs, newest first, with decision, timings and exports per destination")
    p.add_argument("--json", action="store_true")
    p.add_argument("--status", help="only jobs in this status")
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(handler=cmd_jobs_list)
    p = jobs_sub.add_parser("retry", help="run a job's analysis again, then export its results")
    p.add_argument("job_id", type=int)
    p.add_argument("--force", action="store_true", help="also when the job is pending, queued or running")
    p.set_defaults(handler=cmd_jobs_retry)
    p = jobs_sub.add_parser("export", help="send a done job's results again (all destinations, or one)")
    p.add_argument("job_id", type=int)
    p.add_argument("--destination", metavar="TITLE", help="only to this destination (added if the job never had it)")
    p.set_defaults(handler=cmd_jobs_export)
