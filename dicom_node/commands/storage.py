"""``dicom-node storage status`` and ``storage purge [--dry-run]``: the disk and retention
(dicom_node.storage.retention)."""

from __future__ import annotations

import argparse
import json

from dicom_node.commands.common import command, database_from, print_table, settings_from, utc_time
from dicom_node.storage.retention import (
    AUDIT_PRUNED,
    BYTES_PURGED,
    EVENTS_PRUNED,
    RESULTS_PURGED,
    SERIES_PURGED,
    Retention,
)


def _mb(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MB"


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    db = database_from(settings, migrate=False)
    try:
        usage = Retention(db, settings).usage()
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(usage.as_dict(), indent=2))
        return 0
    policy, disk, counts = settings.retention, usage.disk, usage.counters
    print(
        f"disk of {settings.data_dir}: {_mb(disk.used)} used of {_mb(disk.total)} ({disk.percent_used:.1f} %), "
        f"{_mb(disk.free)} free"
    )
    left = (
        f"{usage.days_left:.1f} day(s) before the disk is full without purging"
        if usage.days_left is not None
        else "nothing received lately"
    )
    print(f"receiving {_mb(usage.bytes_per_day)} a day: {left}")
    images = f"{policy.images_days:g} day(s)" if policy.images_days is not None else "until the disk needs the room"
    results = f"{policy.results_days:g} day(s)" if policy.results_days is not None else "for ever"
    print(
        f"images kept {images} once finished; results {results}; purged from "
        f"{policy.high_water_percent:g} % used down to {policy.low_water_percent:g} %"
    )
    print(
        f"purged so far: {counts[SERIES_PURGED]} series ({_mb(counts[BYTES_PURGED])}), results of "
        f"{counts[RESULTS_PURGED]} job(s); rows pruned: {counts[EVENTS_PRUNED]} event(s), "
        f"{counts[AUDIT_PRUNED]} audit entr(ies)"
    )
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    db = database_from(settings)
    try:
        retention = Retention(db, settings, actor="command line")
        report = retention.plan() if args.dry_run else retention.run_once()
    finally:
        db.dispose()
    rows = [
        (utc_time(item.finished_at), item.local_ae or "-", item.series_uid, _mb(item.size_bytes), why)
        for item, why in report.purged
    ]
    verb = "would purge" if args.dry_run else "purged"
    print_table(
        ["FINISHED", "LOCAL AE", "SERIES", "SIZE", "WHY"],
        rows,
        empty=f"nothing to purge now ({'dry run' if args.dry_run else 'policy applied'})",
    )
    if rows:
        print(f"{verb} the images of {len(rows)} series, {_mb(sum(i.size_bytes for i, _ in report.purged))}")
    if not args.dry_run and (report.results_purged or report.events_pruned or report.audit_pruned):
        print(
            f"removed the results of {report.results_purged} job(s); pruned {report.events_pruned} event(s) and "
            f"{report.audit_pruned} audit entr(ies)"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    storage = command(
        sub,
        "storage",
        "the disk and what is kept on it",
        "dicom-node storage status",
        description="The disk and what is kept on it (retention.* settings)",
    )
    storage_sub = storage.add_subparsers(dest="storage_command", metavar="ACTION", required=True)
    p = command(
        storage_sub,
        "status",
        "disk used and free, the receiving rate, the days left, what was purged",
        "dicom-node storage status\ndicom-node storage status --json",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=cmd_status)
    p = command(
        storage_sub,
        "purge",
        "apply the retention policy now (serve applies it every retention.check_seconds)",
        "dicom-node storage purge --dry-run\ndicom-node storage purge",
        description="Apply the retention policy now: the images of finished series kept past their days, or the "
        "oldest finished series' while the disk is over retention.high_water_percent; results and event and audit "
        "rows past their days. A series still receiving, with a job or an export not finished, is never purged",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be purged, purge nothing")
    p.set_defaults(handler=cmd_purge)
