"""``dicom-node ae ...``: local AE titles, allowed sources and result destinations.

Every change goes through dicom_node.configuration (the validators and schemas the admin app
uses) and is written to the audit log as ``cli:<os user>``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy import select

from dicom_node import configuration as c
from dicom_node.commands.common import csv_list, database_from, fail, json_arg, settings_from
from dicom_node.configuration import ConfigError, audit_changes, cli_actor
from dicom_node.db.models import Destination, LocalAE, Source
from dicom_node.outputs.kinds import OUTPUT_KINDS


def _apply(args: argparse.Namespace, change: Any) -> int:
    db = database_from(settings_from(args))
    try:
        with db.session() as s:
            audit_changes(s, cli_actor(), via="cli")
            result = change(s)
    except ConfigError as exc:
        return fail(f"refused: {exc}")
    finally:
        db.dispose()
    print(json.dumps(result, default=str))
    return 0


def cmd_ae_add_local(args: argparse.Namespace) -> int:
    defaults = settings_from(args).completion

    def change(s: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"title": args.title, "port": args.port}
        if args.quiet_seconds is not None:
            data["quiet_seconds"] = args.quiet_seconds
        if args.max_wait_seconds is not None:
            data["max_wait_seconds"] = args.max_wait_seconds
        if args.send_results_to:
            data["send_results_to"] = csv_list(args.send_results_to)
        if args.filters:
            data["filters"] = json_arg("--filters", args.filters)
        if args.sop_classes:
            data["extra_sop_classes"] = csv_list(args.sop_classes)
        if args.return_to_caller:
            data["return_to_caller"] = True
        if args.allow_any_source:
            data["require_known_source"] = False
        if args.disabled:
            data["enabled"] = False
        return c.local_ae_dict(c.add_local_ae(s, c.parse(c.LocalAEIn, data), defaults))

    return _apply(args, change)


def cmd_ae_update_local(args: argparse.Namespace) -> int:
    def change(s: Any) -> dict[str, Any]:
        row = s.scalar(select(LocalAE).where(LocalAE.title == args.title))
        if row is None:
            raise c.ConfigError("title", f"no local AE titled {args.title!r}")
        data: dict[str, Any] = {}
        for key in ("port", "quiet_seconds", "max_wait_seconds"):
            if getattr(args, key) is not None:
                data[key] = getattr(args, key)
        if args.new_title:
            data["title"] = args.new_title
        if args.send_results_to is not None:
            data["send_results_to"] = csv_list(args.send_results_to)
        if args.filters is not None:
            data["filters"] = json_arg("--filters", args.filters)
        if args.sop_classes is not None:
            data["extra_sop_classes"] = csv_list(args.sop_classes)
        if args.enabled is not None:
            data["enabled"] = args.enabled
        return c.local_ae_dict(c.update_local_ae(s, row, c.parse(c.LocalAEPatch, data)))

    return _apply(args, change)


def cmd_ae_add_source(args: argparse.Namespace) -> int:
    def change(s: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"title": args.title, "host": args.host, "port": args.port}
        return c.source_dict(c.add_source(s, c.parse(c.SourceIn, data)))

    return _apply(args, change)


def cmd_ae_add_destination(args: argparse.Namespace) -> int:
    def change(s: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"title": args.title, "host": args.host, "port": args.port, "tls": args.tls}
        if args.outputs:
            data["outputs"] = csv_list(args.outputs)
        return c.destination_dict(c.add_destination(s, c.parse(c.DestinationIn, data)))

    return _apply(args, change)


def cmd_ae_remove(args: argparse.Namespace) -> int:
    models: dict[str, type[LocalAE] | type[Source] | type[Destination]] = {"local": LocalAE, "source": Source, "destination": Destination}
    model = models[args.kind]

    def change(s: Any) -> dict[str, Any]:
        rows = s.scalars(select(model).where(model.title == args.title)).all()
        if not rows:
            raise c.ConfigError("title", f"no {args.kind} titled {args.title!r}")
        for row in rows:
            s.delete(row)
        return {"removed": args.kind, "title": args.title, "count": len(rows)}

    return _apply(args, change)


def cmd_ae_list(args: argparse.Namespace) -> int:

    db = database_from(settings_from(args))
    with db.session() as s:
        data = {
            "local": [c.local_ae_dict(r) for r in s.scalars(select(LocalAE).order_by(LocalAE.title))],
            "sources": [c.source_dict(r) for r in s.scalars(select(Source).order_by(Source.title))],
            "destinations": [c.destination_dict(r) for r in s.scalars(select(Destination).order_by(Destination.title))],
        }
    db.dispose()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for ae in data["local"]:
        state = "enabled" if ae["enabled"] else "disabled"
        print(f"local        {ae['title']:<16} port {ae['port']:<5} quiet {ae['quiet_seconds']:g}s  {state}  -> {', '.join(ae['send_results_to']) or '(no destination)'}")
    for src in data["sources"]:
        print(f"source       {src['title']:<16} host {src['host'] or '(any)'}  return port {src['port'] or '-'}")
    for dst in data["destinations"]:
        print(f"destination  {dst['title']:<16} {dst['host']}:{dst['port']}{' TLS' if dst['tls'] else ''}  outputs {','.join(dst['outputs'])}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ae = sub.add_parser("ae", help="local AE titles, allowed sources, result destinations")
    ae_sub = ae.add_subparsers(dest="ae_command", required=True)

    p = ae_sub.add_parser("add-local", help="listen as a new AE title on its own port")
    p.add_argument("title")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--quiet-seconds", type=float, help="series complete after this long without new images (default: completion.default_quiet_seconds)")
    p.add_argument("--max-wait-seconds", type=float, help="series complete after this long regardless (default: completion.default_max_wait_seconds)")
    p.add_argument("--send-results-to", metavar="DEST[,DEST]", help="destination titles")
    p.add_argument("--filters", metavar="JSON", help='which series are analysed, e.g. \'{"body_parts": ["CHEST"], "min_slices": 20}\'')
    p.add_argument("--sop-classes", metavar="UID[,UID]", help="storage SOP classes accepted besides CT and Enhanced CT ('*' = all)")
    p.add_argument("--return-to-caller", action="store_true", help="also send results back to the calling AE (needs its port)")
    p.add_argument("--allow-any-source", action="store_true", help="turn the calling-AE allow-list off for this AE")
    p.add_argument("--disabled", action="store_true")
    p.set_defaults(handler=cmd_ae_add_local)

    p = ae_sub.add_parser("update-local", help="change a local AE (takes effect within seconds)")
    p.add_argument("title")
    p.add_argument("--new-title")
    p.add_argument("--port", type=int)
    p.add_argument("--quiet-seconds", type=float)
    p.add_argument("--max-wait-seconds", type=float)
    p.add_argument("--send-results-to", metavar="DEST[,DEST]")
    p.add_argument("--filters", metavar="JSON")
    p.add_argument("--sop-classes", metavar="UID[,UID]")
    p.add_argument("--enable", dest="enabled", action="store_const", const=True)
    p.add_argument("--disable", dest="enabled", action="store_const", const=False)
    p.set_defaults(handler=cmd_ae_update_local)

    p = ae_sub.add_parser("add-source", help="allow a calling AE to send")
    p.add_argument("title")
    p.add_argument("--host", help="only from this host (IP address or name)")
    p.add_argument("--port", type=int, help="the source's own storage port, for results back to it")
    p.set_defaults(handler=cmd_ae_add_source)

    p = ae_sub.add_parser("add-destination", help="a storage SCP (PACS) that receives results")
    p.add_argument("title")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", action="store_true")
    p.add_argument("--outputs", metavar="KIND[,KIND]", help=f"which of {','.join(OUTPUT_KINDS)} it gets (default all)")
    p.set_defaults(handler=cmd_ae_add_destination)

    p = ae_sub.add_parser("remove", help="remove a local AE, source or destination")
    p.add_argument("kind", choices=["local", "source", "destination"])
    p.add_argument("title")
    p.set_defaults(handler=cmd_ae_remove)

    p = ae_sub.add_parser("list", help="list local AEs, sources and destinations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_ae_list)
