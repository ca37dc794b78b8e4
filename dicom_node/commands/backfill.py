"""``dicom-node backfill``: analyse a source PACS's past studies at low priority (start, resume,
list, cancel). The work is dicom_node.pipeline.backfill's; the states dicom_node.jobs.backfills'."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from dicom_node.commands.common import Progress, command, database_from, print_table, settings_from
from dicom_node.configuration import cli_actor
from dicom_node.db import Database
from dicom_node.errors import Conflict, Refused
from dicom_node.jobs import backfills
from dicom_node.jobs.states import OPEN_BACKFILL_STATUSES, BackfillStatus
from dicom_node.pipeline import backfill as work


def _accessions(path: str | None) -> list[str]:
    if not path:
        return []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise Refused("accessions", f"cannot read {path}: {exc.strerror}") from None
    out = [line.split("#", 1)[0].strip() for line in lines]
    out = [a for a in out if a]
    if not out:
        raise Refused("accessions", f"{path} holds no accession number (one a line)")
    return out


def cmd_backfill(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    db = database_from(settings)
    try:
        if args.list:
            return _list(db, args.json)
        if args.cancel is not None:
            return _cancel(db, args.cancel)
        if args.resume is not None:
            backfill_id = args.resume
            state = backfills.get(db, backfill_id)
            if state["status"] not in {st.value for st in OPEN_BACKFILL_STATUSES}:
                raise Conflict(f"backfill {backfill_id} is finished; start a new one")
            if state["run_by"] == "serve":
                raise Conflict(f"backfill {backfill_id} was started in the admin pages: serve runs it")
        else:
            backfill_id = _start(db, settings, args)
            if backfill_id is None:
                return 0
        bar = Progress(f"backfill {backfill_id}", "series")
        try:
            result = work.run(db, settings, backfill_id, progress=bar)
        finally:
            bar.close()
        if args.wait:
            result = _wait(db, backfill_id, args.wait_seconds)
        print(json.dumps(_summary(result)))
    finally:
        db.dispose()
    return 0


def _start(db: Database, settings: Any, args: argparse.Namespace) -> int | None:
    if not args.source:
        raise Refused("source", "name the source PACS (a destination) with --source, or --resume ID / --list")
    values = work.prepare(
        db,
        source=args.source,
        date_from=args.date_from or "",
        date_to=args.date_to or "",
        modality=args.modality or "",
        accessions=_accessions(args.accessions),
        local_ae=args.local_ae or "",
        method=args.retrieve or "",
        rate=args.rate or "",
        between=args.between or "",
        force=bool(args.force),
        created_by=cli_actor(),
    )
    if args.dry_run:
        _dry_run(db, settings, values, args.json)
        return None
    return backfills.create(db, run_by="command", **values)


def _dry_run(db: Database, settings: Any, values: dict[str, Any], as_json: bool) -> None:
    """What the backfill would do, without writing anything."""
    found = work.query_with(settings, work.source_of(db, values["source"]), values)
    with db.session() as s:
        rule = backfills.local_ae_filter(s, values["local_ae"])
        planned = backfills.decide(s, found, rule, force=values["force"])
        s.rollback()
    rows = [
        {
            "action": d.status.value,
            "study_date": d.found.study_date,
            "accession_number": d.found.accession_number,
            "modality": d.found.modality,
            "instances": d.found.instances,
            "series_description": d.found.series_description,
            "series_uid": d.found.series_uid,
            "reason": d.reason,
        }
        for d in planned
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print_table(
        ("ACTION", "DATE", "ACCESSION", "MODALITY", "IMAGES", "DESCRIPTION", "SERIES UID", "REASON"),
        (
            (
                r["action"],
                r["study_date"],
                r["accession_number"],
                r["modality"],
                r["instances"],
                r["series_description"],
                r["series_uid"],
                r["reason"],
            )
            for r in rows
        ),  # fmt: skip
        empty="the source has no series in that range",
    )
    take = sum(1 for r in rows if r["action"] in ("planned", "requeued"))
    print(f"dry run: {take} of {len(rows)} series would be analysed; nothing was retrieved")


def _wait(db: Database, backfill_id: int, timeout: float) -> dict[str, Any]:
    """Until every series brought is analysed (or failed), with a bar."""
    bar = Progress(f"backfill {backfill_id} analysed", "series")
    deadline = time.monotonic() + timeout
    try:
        while True:
            state = backfills.progress(db, backfill_id)
            finished = state["analysed"] + state["analysis_failed"]
            bar(finished, state["brought"])
            if finished >= state["brought"] or time.monotonic() > deadline:
                return state
            time.sleep(1.0)
    finally:
        bar.close()


def _summary(state: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "source", "method", "local_ae", "series_found", "series", "brought", "analysed")
    return {k: state[k] for k in keys} | {"analysis_failed": state["analysis_failed"], "reason": state["reason"]}


def _list(db: Database, as_json: bool) -> int:
    rows = backfills.backfills(db)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print_table(
        (
            "ID",
            "STATUS",
            "SOURCE",
            "METHOD",
            "AE",
            "RANGE",
            "FOUND",
            "TO RETRIEVE",
            "BROUGHT",
            "ANALYSED",
            "SKIPPED",
            "FAILED",
        ),
        (
            (
                r["id"],
                r["status"],
                r["source"],
                r["method"],
                r["local_ae"],
                f"{r['date_from']}-{r['date_to']}"
                if (r["date_from"] or r["date_to"])
                else f"{len(r['accessions'])} accession(s)",
                r["series_found"],
                r["to_retrieve"],
                r["brought"],
                r["analysed"],
                r["series"].get("skipped", 0),
                r["series"].get("failed", 0),
            )
            for r in rows
        ),  # fmt: skip
        empty="no backfill yet: dicom-node backfill --source PACS --from DATE --to DATE",
    )
    return 0


def _cancel(db: Database, backfill_id: int) -> int:
    state = backfills.get(db, backfill_id)
    if state["status"] not in {st.value for st in OPEN_BACKFILL_STATUSES}:
        raise Conflict(f"backfill {backfill_id} is {state['status']}")
    backfills.finish(db, backfill_id, BackfillStatus.CANCELLED, f"cancelled by {cli_actor()}")
    print(json.dumps({"id": backfill_id, "status": BackfillStatus.CANCELLED.value}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "backfill",
        "analyse a PACS's past studies at low priority",
        """
        dicom-node backfill --source PACS --from 2026-11-01 --to 2026-11-30 --modality CT --dry-run
        dicom-node backfill --source PACS --from 2026-11-01 --to 2026-11-30 --rate 60/h --between 19:00-07:00
        dicom-node backfill --source PACS --accessions accessions.txt --retrieve get
        dicom-node backfill --resume 3          after a restart: what is left of backfill 3
        dicom-node backfill --list
        """,
        description=(
            "Query a source PACS (a destination of the node) for past studies (C-FIND, or QIDO-RS for a DICOMweb "
            "one), take the series the local AE's filters accept and retrieve them (C-MOVE to the local AE, C-GET, "
            "or WADO-RS); their jobs run at low priority, after live studies. A series already analysed here is "
            "skipped unless --force. Needs the node running (serve or up) to analyse them"
        ),
    )
    p.add_argument("--source", help="the source PACS: a destination's title (dicom-node ae list)")
    p.add_argument("--from", dest="date_from", metavar="DATE", help="first Study Date (YYYY-MM-DD)")
    p.add_argument("--to", dest="date_to", metavar="DATE", help="last Study Date (YYYY-MM-DD)")
    p.add_argument("--modality", help="only studies with this modality (Modalities in Study), e.g. CT")
    p.add_argument("--accessions", metavar="FILE", help="only these studies: one accession number a line")
    p.add_argument("--local-ae", help="the local AE that receives and analyses them (default: the only one)")
    p.add_argument("--retrieve", choices=work.METHODS, help="move (default for DIMSE), get, or wado (DICOMweb sources)")
    p.add_argument("--rate", metavar="N/h", help="at most N studies an hour")
    p.add_argument("--between", metavar="HH:MM-HH:MM", help="retrieve only in this daily window (local time)")
    p.add_argument("--force", action="store_true", help="analyse again series already analysed here")
    p.add_argument("--dry-run", action="store_true", help="list what would be retrieved; retrieve nothing")
    p.add_argument("--wait", action="store_true", help="then wait until every series brought is analysed")
    p.add_argument("--wait-seconds", type=float, default=24 * 3600.0, help="how long --wait waits at most")
    p.add_argument("--resume", type=int, metavar="ID", help="go on with an unfinished backfill")
    p.add_argument("--cancel", type=int, metavar="ID", help="stop an unfinished backfill")
    p.add_argument("--list", action="store_true", help="the backfills and their progress")
    p.add_argument("--json", action="store_true", help="JSON for programs instead of a table")
    p.set_defaults(handler=cmd_backfill)
