"""``dicom-node ae ...``: local AE titles, allowed sources and result destinations.

Every change goes through dicom_node.configuration (the validators and schemas the admin app
uses) and is written to the audit log as ``cli:<os user>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import select

from dicom_node import configuration as c
from dicom_node.commands.common import (
    apply_change,
    command,
    csv_list,
    database_from,
    json_arg,
    print_table,
    settings_from,
)
from dicom_node.db.models import Destination, LocalAE, Source
from dicom_node.errors import Invalid, NotFound, Unavailable
from dicom_node.outputs.kinds import OUTPUT_KINDS
from dicom_node.validation import DESTINATION_KINDS, WEB_AUTHS


def cmd_ae_add_local(args: argparse.Namespace) -> int:
    defaults = settings_from(args).completion

    def change(s: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"title": args.title, "port": args.port}
        if args.quiet_seconds is not None:
            data["quiet_seconds"] = args.quiet_seconds
        if args.max_wait_seconds is not None:
            data["max_wait_seconds"] = args.max_wait_seconds
        if args.keep_images_days is not None:
            data["keep_images_days"] = args.keep_images_days
        if args.send_results_to:
            data["send_results_to"] = csv_list(args.send_results_to)
        if args.filters:
            data["filters"] = json_arg("--filters", args.filters)
        if args.sop_classes:
            data["extra_sop_classes"] = csv_list(args.sop_classes)
        if args.stow_tokens:
            data["stow_tokens"] = _token_ids(args.stow_tokens)
        if args.return_to_caller:
            data["return_to_caller"] = True
        if args.allow_any_source:
            data["require_known_source"] = False
        if args.disabled:
            data["enabled"] = False
        return c.local_ae_dict(c.add_local_ae(s, c.parse(c.LocalAEIn, data), defaults))

    return apply_change(args, change)


def cmd_ae_update_local(args: argparse.Namespace) -> int:
    def change(s: Any) -> dict[str, Any]:
        row = s.scalar(select(LocalAE).where(LocalAE.title == args.title))
        if row is None:
            raise c.Refused("title", f"no local AE titled {args.title!r}")
        data: dict[str, Any] = {}
        for key in ("port", "quiet_seconds", "max_wait_seconds", "keep_images_days"):
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
        if args.stow_tokens is not None:
            data["stow_tokens"] = _token_ids(args.stow_tokens)
        if args.enabled is not None:
            data["enabled"] = args.enabled
        return c.local_ae_dict(c.update_local_ae(s, row, c.parse(c.LocalAEPatch, data)))

    return apply_change(args, change)


def _token_ids(text: str) -> list[int]:
    """``--stow-tokens 3,7``: API token ids ("" allows none)."""
    try:
        return [int(v) for v in csv_list(text)]
    except ValueError:
        raise Invalid(f"--stow-tokens takes API token ids (dicom-node admin list-tokens), not {text!r}") from None


def cmd_ae_add_source(args: argparse.Namespace) -> int:
    def change(s: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"title": args.title, "host": args.host, "port": args.port}
        return c.source_dict(c.add_source(s, c.parse(c.SourceIn, data)))

    return apply_change(args, change)


def _destination_options(args: argparse.Namespace) -> dict[str, Any]:
    """The destination fields given on the command line (add-destination and update-destination)."""
    data: dict[str, Any] = {}
    for key in ("kind", "host", "port", "url", "auth", "username", "password", "token", "ca_file"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    if args.secret_stdin:
        if "password" in data or "token" in data:
            raise Invalid("--secret-stdin replaces --password and --token: give one of them")
        secret = sys.stdin.readline().rstrip("\r\n")
        data["token" if data.get("auth") == "bearer" else "password"] = secret
    if args.verify_tls is not None:
        data["verify_tls"] = args.verify_tls
    if args.outputs is not None:
        data["outputs"] = csv_list(args.outputs)
    return data


def cmd_ae_add_destination(args: argparse.Namespace) -> int:
    defaults = settings_from(args).export

    def change(s: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"title": args.title, "tls": args.tls, **_destination_options(args)}
        if args.disabled:
            data["enabled"] = False
        return c.destination_dict(c.add_destination(s, c.parse(c.DestinationIn, data), defaults))

    return apply_change(args, change)


def cmd_ae_update_destination(args: argparse.Namespace) -> int:
    def change(s: Any) -> dict[str, Any]:
        row = s.scalar(select(Destination).where(Destination.title == args.title))
        if row is None:
            raise c.Refused("title", f"no destination titled {args.title!r}")
        data = _destination_options(args)
        if args.new_title:
            data["title"] = args.new_title
        if args.tls is not None:
            data["tls"] = args.tls
        if args.enabled is not None:
            data["enabled"] = args.enabled
        return c.destination_dict(c.update_destination(s, row, c.parse(c.DestinationPatch, data)))

    return apply_change(args, change)


def cmd_ae_remove(args: argparse.Namespace) -> int:
    models: dict[str, type[LocalAE] | type[Source] | type[Destination]] = {
        "local": LocalAE,
        "source": Source,
        "destination": Destination,
    }
    model = models[args.kind]

    def change(s: Any) -> dict[str, Any]:
        rows = s.scalars(select(model).where(model.title == args.title)).all()
        if not rows:
            raise c.Refused("title", f"no {args.kind} titled {args.title!r}")
        for row in rows:
            s.delete(row)
        return {"removed": args.kind, "title": args.title, "count": len(rows)}

    return apply_change(args, change)


def cmd_ae_list(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args), migrate=False)
    try:
        with db.session() as s:
            data = {
                # listen_error: why the listeners can not bind the port ("" while they listen).
                "local": [
                    {**c.local_ae_dict(r), "listen_error": r.listen_error or ""}
                    for r in s.scalars(select(LocalAE).order_by(LocalAE.title))
                ],
                "sources": [c.source_dict(r) for r in s.scalars(select(Source).order_by(Source.title))],
                "destinations": [
                    c.destination_dict(r) for r in s.scalars(select(Destination).order_by(Destination.title))
                ],
            }
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("Local AEs (the node listens as these):")
    print_table(
        ("TITLE", "PORT", "QUIET S", "STATE", "SOURCES", "SENDS RESULTS TO"),
        (
            (
                ae["title"],
                ae["port"],
                f"{ae['quiet_seconds']:g}",
                ("error: " + ae["listen_error"])
                if ae["enabled"] and ae["listen_error"]
                else "enabled"
                if ae["enabled"]
                else "disabled",
                "listed only" if ae["require_known_source"] else "any",
                ", ".join(ae["send_results_to"]) + (" + caller" if ae.get("return_to_caller") else ""),
            )
            for ae in data["local"]
        ),
        empty="  none: dicom-node up makes COVIDNODE on port 11112, or: dicom-node ae add-local TITLE --port P",
    )
    print("\nSources (calling AEs allowed to send):")
    print_table(
        ("TITLE", "HOST", "RESULTS PORT"),
        ((src["title"], src["host"] or "any", src["port"]) for src in data["sources"]),
        empty="  none: nothing is accepted until one is added: dicom-node ae add-source TITLE [--host H]",
    )
    print("\nDestinations (where results go):")
    print_table(
        ("TITLE", "HOST", "PORT", "TLS", "OUTPUTS", "KIND", "URL", "AUTH"),
        (
            (
                dst["title"],
                dst["host"],
                dst["port"],
                ("yes" if dst["verify_tls"] else "unverified") if dst["tls"] else "no",
                ",".join(dst["outputs"]) + ("" if dst["enabled"] else " (disabled)"),
                dst["kind"],
                dst["url"],
                _auth_shown(dst),
            )
            for dst in data["destinations"]
        ),
        empty="  none: dicom-node ae add-destination TITLE --host H --port P",
    )
    return 0


def _auth_shown(dst: dict[str, Any]) -> str:
    """A DICOMweb destination's authentication without its secret: basic:user, bearer, none."""
    if dst["kind"] != "dicomweb":
        return ""
    return f"basic:{dst['username']}" if dst["auth"] == "basic" else dst["auth"]


def cmd_ae_echo(args: argparse.Namespace) -> int:
    from dicom_node.jobs.exports import web_peer_for  # noqa: PLC0415  httpx: only this command needs it
    from dicom_node.sending.dicomweb import web_echo  # noqa: PLC0415  httpx: only this command needs it
    from dicom_node.sending.echo import c_echo  # noqa: PLC0415  pynetdicom: only this command needs it

    settings = settings_from(args)
    db = database_from(settings)
    try:
        with db.session() as s:
            row = s.scalar(select(Destination).where(Destination.title == args.title))
            peer = None if row is None else (row.host, row.port, row.tls)
            web = None if row is None else web_peer_for(row)
    finally:
        db.dispose()
    if peer is None:
        raise NotFound(f"no destination titled {args.title!r}; dicom-node ae list shows them")
    if web is not None:
        return _web_echo_answer(args, web_echo(web, timeout=min(settings.export.timeout_seconds, 10.0)))
    host, port, tls = peer
    calling = settings.export.calling_ae_title
    answer = c_echo(host, port, args.title, calling_ae_title=calling, tls=tls)
    if args.json:
        print(json.dumps(answer.to_json(), indent=2))
    if not answer.ok:
        raise Unavailable(
            f"{args.title} at {host}:{port} did not answer C-ECHO: "
            f"{answer.outcome}{': ' + answer.detail if answer.detail else ''}; "
            f"is it running, and does it accept calling AE {calling} and called AE {args.title}?"
        )
    if not args.json:
        print(f"{args.title} at {host}:{port} answered C-ECHO (calling AE {calling}) in {answer.total_ms:.0f} ms")
    return 0


def _web_echo_answer(args: argparse.Namespace, answer: Any) -> int:
    """What ``ae echo`` says about a DICOMweb destination's QIDO-RS test."""
    if args.json:
        print(json.dumps(answer.to_json(), indent=2))
    if not answer.ok:
        raise Unavailable(
            f"{args.title} at {answer.url} did not answer a QIDO-RS search: "
            f"{answer.outcome}{': ' + answer.detail if answer.detail else ''}; "
            "is the URL the DICOMweb base (the one /studies follows), and are its credentials right?"
        )
    if not args.json:
        took = f"{answer.total_ms:.0f} ms"
        print(f"{args.title} at {answer.url} answered a QIDO-RS search (HTTP {answer.status}) in {took}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ae = command(
        sub,
        "ae",
        "local AE titles, allowed sources, result destinations",
        """
        dicom-node ae list
        dicom-node ae add-source STORESCU --host 127.0.0.1
        """,
        description="Local AE titles (where the node listens), allowed sources (who may send) "
        "and result destinations (PACS)",
    )
    ae_sub = ae.add_subparsers(dest="ae_command", metavar="ACTION", required=True)
    _register_local(ae_sub)
    _register_peers(ae_sub)
    _register_listing(ae_sub)


_STOW_TOKENS_HELP = (
    "ids of the API tokens (dicom-node admin create-token) that may store instances here by STOW-RS, "
    "POST /dicomweb/TITLE/studies on the admin port; the list replaces the AE's"
)


def _register_local(ae_sub: argparse._SubParsersAction) -> None:
    """``ae add-local`` and ``ae update-local``: the AE titles the node listens as."""
    p = command(
        ae_sub,
        "add-local",
        "listen as a new AE title on its own port",
        "dicom-node ae add-local CTAI --port 11113 --send-results-to PACS --quiet-seconds 10",
    )
    p.add_argument("title")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--quiet-seconds",
        type=float,
        help="series complete after this long without new images (default: completion.default_quiet_seconds)",
    )
    p.add_argument(
        "--max-wait-seconds",
        type=float,
        help="series complete after this long regardless (default: completion.default_max_wait_seconds)",
    )
    p.add_argument(
        "--keep-images-days",
        type=float,
        metavar="DAYS",
        help="keep a series' images this long once its analysis and exports are finished (default: "
        "retention.images_days)",
    )
    p.add_argument("--send-results-to", metavar="DEST[,DEST]", help="destination titles")
    p.add_argument(
        "--filters",
        metavar="JSON",
        help='which series are analysed, e.g. \'{"body_parts": ["CHEST"], "min_slices": 20}\'',
    )
    p.add_argument(
        "--sop-classes", metavar="UID[,UID]", help="storage SOP classes accepted besides CT and Enhanced CT ('*' = all)"
    )
    p.add_argument("--stow-tokens", metavar="ID[,ID]", help=_STOW_TOKENS_HELP)
    p.add_argument(
        "--return-to-caller", action="store_true", help="also send results back to the calling AE (needs its port)"
    )
    p.add_argument("--allow-any-source", action="store_true", help="turn the calling-AE allow-list off for this AE")
    p.add_argument("--disabled", action="store_true")
    p.set_defaults(handler=cmd_ae_add_local)

    p = command(
        ae_sub,
        "update-local",
        "change a local AE (takes effect within seconds)",
        """
        dicom-node ae update-local COVIDNODE --send-results-to PACS
        dicom-node ae update-local COVIDNODE --disable
        dicom-node ae update-local COVIDNODE --stow-tokens 3,7
        """,
    )
    p.add_argument("title")
    p.add_argument("--new-title")
    p.add_argument("--port", type=int)
    p.add_argument("--quiet-seconds", type=float)
    p.add_argument("--max-wait-seconds", type=float)
    p.add_argument("--keep-images-days", type=float, metavar="DAYS")
    p.add_argument("--send-results-to", metavar="DEST[,DEST]")
    p.add_argument("--filters", metavar="JSON")
    p.add_argument("--sop-classes", metavar="UID[,UID]")
    p.add_argument("--stow-tokens", metavar="ID[,ID]", help=_STOW_TOKENS_HELP + "; '' allows none")
    p.add_argument("--enable", dest="enabled", action="store_const", const=True)
    p.add_argument("--disable", dest="enabled", action="store_const", const=False)
    p.set_defaults(handler=cmd_ae_update_local)


def _register_peers(ae_sub: argparse._SubParsersAction) -> None:
    """``ae add-source``, ``ae add-destination`` and ``ae echo``: who sends, who receives results."""
    p = command(
        ae_sub, "add-source", "allow a calling AE to send", "dicom-node ae add-source CT_SCANNER_1 --host 10.0.0.21"
    )
    p.add_argument("title")
    p.add_argument("--host", help="only from this host (IP address or name)")
    p.add_argument("--port", type=int, help="the source's own storage port, for results back to it")
    p.set_defaults(handler=cmd_ae_add_source)

    p = command(
        ae_sub,
        "add-destination",
        "a storage SCP (PACS) or DICOMweb service that receives results",
        """
        dicom-node ae add-destination PACS --host 127.0.0.1 --port 4242
        dicom-node ae add-destination VNA --host vna.example.org --port 11112 --tls --outputs sr,seg
        dicom-node ae add-destination WEBPACS --kind dicomweb --url https://pacs.example.org/dicom-web --auth basic --user node --secret-stdin
        """,  # noqa: E501  an example line is one command
        description="A storage SCP (PACS) that receives results by C-STORE (kind dimse: --host, --port), or a "
        "DICOMweb service that receives them by STOW-RS (kind dicomweb: --url, --auth). The node calls a storage "
        "SCP as export.calling_ae_title (COVIDCTNODE by default): the PACS must accept that AE",
    )
    p.add_argument("title", help="the called AE title (DIMSE) or a name of the same form (DICOMweb)")
    p.add_argument("--tls", action="store_true", help="DIMSE over TLS (a DICOMweb URL says it with https://)")
    p.add_argument("--disabled", action="store_true")
    _destination_arguments(p)
    p.set_defaults(handler=cmd_ae_add_destination)

    p = command(
        ae_sub,
        "update-destination",
        "change a destination (fields not given are kept)",
        """
        dicom-node ae update-destination WEBPACS --auth bearer --token 'eyJhbGciOi...'
        dicom-node ae update-destination PACS --outputs sr,kos --disable
        """,
    )
    p.add_argument("title")
    p.add_argument("--new-title")
    p.add_argument("--tls", dest="tls", action="store_const", const=True)
    p.add_argument("--no-tls", dest="tls", action="store_const", const=False)
    p.add_argument("--enable", dest="enabled", action="store_const", const=True)
    p.add_argument("--disable", dest="enabled", action="store_const", const=False)
    _destination_arguments(p)
    p.set_defaults(handler=cmd_ae_update_destination)

    p = command(
        ae_sub,
        "echo",
        "check that a destination answers (C-ECHO as export.calling_ae_title; a DICOMweb one: a QIDO-RS search)",
        "dicom-node ae echo PACS",
    )
    p.add_argument("title", help="a destination's title")
    p.add_argument("--json", action="store_true", help="the full answer as JSON")
    p.set_defaults(handler=cmd_ae_echo)


def _destination_arguments(p: argparse.ArgumentParser) -> None:
    """The options add-destination and update-destination share."""
    p.add_argument("--kind", choices=DESTINATION_KINDS, help="dimse (C-STORE, the default) or dicomweb (STOW-RS)")
    p.add_argument("--host", help="DIMSE: the storage SCP's host")
    p.add_argument("--port", type=int, help="DIMSE: the storage SCP's port")
    p.add_argument(
        "--url", help="DICOMweb: the base URL, e.g. http://pacs:8042/dicom-web (STOW-RS posts to URL/studies)"
    )
    p.add_argument("--auth", choices=WEB_AUTHS, help="DICOMweb: HTTP authentication (default none)")
    p.add_argument("--user", dest="username", help="DICOMweb: the user name of basic authentication")
    p.add_argument("--password", help="DICOMweb: the password of basic authentication (see --secret-stdin)")
    p.add_argument("--token", help="DICOMweb: the bearer token (see --secret-stdin)")
    p.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the password (basic) or token (bearer) from the first line of standard input, out of the "
        "process list",
    )
    p.add_argument("--ca-file", help="DICOMweb over https: a PEM file of the CA(s) to trust instead of the system's")
    p.add_argument(
        "--no-verify-tls",
        dest="verify_tls",
        action="store_const",
        const=False,
        help="DICOMweb over https: do not verify the server's certificate (tests only)",
    )
    p.add_argument("--verify-tls", dest="verify_tls", action="store_const", const=True, help=argparse.SUPPRESS)
    p.add_argument(
        "--outputs",
        metavar="KIND[,KIND]",
        help=f"which of {','.join(OUTPUT_KINDS)} it gets (default: the setting export.default_outputs)",
    )


def _register_listing(ae_sub: argparse._SubParsersAction) -> None:
    """``ae remove`` and ``ae list``."""
    p = command(ae_sub, "remove", "remove a local AE, source or destination", "dicom-node ae remove source STORESCU")
    p.add_argument("kind", choices=["local", "source", "destination"])
    p.add_argument("title")
    p.set_defaults(handler=cmd_ae_remove)

    p = command(
        ae_sub,
        "list",
        "list local AEs, sources and destinations",
        """
        dicom-node ae list
        dicom-node ae list --json
        """,
    )
    p.add_argument("--json", action="store_true", help="JSON for programs instead of tables")
    p.set_defaults(handler=cmd_ae_list)
