"""``dicom-node triage ...``: the priority rules (which jobs run first), the notification channels
(HL7 v2 to a RIS, webhooks, e-mail) and the notification rules (which results go where).

Every change goes through dicom_node.triage.rules (the schemas the admin API uses) and is written
to the audit log as ``cli:<os user>``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.commands.common import (
    apply_change,
    command,
    csv_list,
    database_from,
    print_table,
    settings_from,
)
from dicom_node.configuration import parse
from dicom_node.db.models import NotificationChannel, NotificationRule, PriorityRule
from dicom_node.errors import Invalid, Refused, Unavailable
from dicom_node.notify.channels import KINDS, SendOptions, send
from dicom_node.notify.payload import sample
from dicom_node.triage import rules as r
from dicom_node.triage.priority import LEVELS

# Command-line option -> PriorityConditions key (lists are comma-separated).
_LIST_CONDITIONS = {
    "calling_ae": "calling_ae",
    "local_ae": "local_ae",
    "requested_priority": "requested_procedure_priority",
    "store_priority": "store_priority",
}
_PATTERN_CONDITIONS = {
    "location_pattern": "patient_location_pattern",
    "admission_pattern": "admission_id_pattern",
    "study_pattern": "study_description_pattern",
    "series_pattern": "series_description_pattern",
}


def _conditions(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The conditions the options set, over ``base``; None when no option names one."""
    out = dict(base or {})
    given = False
    for option, key in _LIST_CONDITIONS.items():
        value = getattr(args, option, None)
        if value is not None:
            given = True
            out[key] = [v.upper() if key.endswith("priority") else v for v in csv_list(value)]
    for option, key in _PATTERN_CONDITIONS.items():
        value = getattr(args, option, None)
        if value is not None:
            given = True
            out[key] = value or None
    return out if given else None


def cmd_add_priority_rule(args: argparse.Namespace) -> int:
    def change(s: Session) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": args.name,
            "priority": args.priority,
            "conditions": _conditions(args) or {},
            "enabled": not args.disabled,
            "description": args.description or "",
        }
        return r.priority_rule_dict(r.add_priority_rule(s, parse(r.PriorityRuleIn, data)))

    return apply_change(args, change)


def cmd_update_priority_rule(args: argparse.Namespace) -> int:
    def change(s: Session) -> dict[str, Any]:
        row = r.priority_rule_named(s, args.name)
        data: dict[str, Any] = {}
        if args.priority is not None:
            data["priority"] = args.priority
        if args.new_name:
            data["name"] = args.new_name
        if args.description is not None:
            data["description"] = args.description
        if args.enabled is not None:
            data["enabled"] = args.enabled
        conditions = _conditions(args, {} if args.replace_conditions else dict(row.conditions or {}))
        if conditions is not None:
            data["conditions"] = {k: v for k, v in conditions.items() if v not in (None, [], "")}
        return r.priority_rule_dict(r.update_priority_rule(s, row, parse(r.PriorityRulePatch, data)))

    return apply_change(args, change)


_REMOVABLE: dict[str, tuple[Any, str]] = {
    "priority-rule": (PriorityRule, "priority rule"),
    "channel": (NotificationChannel, "channel"),
    "notify-rule": (NotificationRule, "notification rule"),
}


def cmd_remove(args: argparse.Namespace) -> int:
    model, what = _REMOVABLE[args.kind]

    def change(s: Session) -> dict[str, Any]:
        s.delete(r.named(s, model, args.name, what))
        return {"removed": args.kind, "name": args.name}

    return apply_change(args, change)


def _channel_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The channel settings the options give (None-valued options left out)."""
    out: dict[str, Any] = {}
    for key in ("host", "port", "url", "sender", "receiving_application", "receiving_facility", "username", "ca_file"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if getattr(args, "to", None):
        out["recipients"] = csv_list(args.to)
    if getattr(args, "no_starttls", False):
        out["starttls"] = False
    for key, env in (("secret", "secret_env"), ("password", "password_env")):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
        elif getattr(args, env, None):
            if args.__dict__[env] not in os.environ:
                raise Invalid(f"--{env.replace('_', '-')} {args.__dict__[env]}: that environment variable is not set")
            out[key] = os.environ[args.__dict__[env]]
    for key, option in (("template", "template_file"), ("body_template", "body_template_file")):
        path = getattr(args, option, None)
        if path is not None:
            try:
                out[key] = Path(path).read_text()
            except OSError as exc:
                raise Invalid(f"--{option.replace('_', '-')} {path}: {exc.strerror}") from None
    if getattr(args, "subject_template", None) is not None:
        out["subject_template"] = args.subject_template
    for item in getattr(args, "option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Refused("option", f"{item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_add_channel(args: argparse.Namespace) -> int:
    def change(s: Session) -> dict[str, Any]:
        data = {
            "name": args.name,
            "kind": args.kind,
            "settings": _channel_settings(args),
            "enabled": not args.disabled,
            "description": args.description or "",
        }
        return r.channel_dict(r.add_channel(s, parse(r.ChannelIn, data)))

    return apply_change(args, change)


def cmd_update_channel(args: argparse.Namespace) -> int:
    def change(s: Session) -> dict[str, Any]:
        row = r.named(s, NotificationChannel, args.name, "channel")
        data: dict[str, Any] = {}
        settings = _channel_settings(args)
        if settings:
            data["settings"] = settings
        if args.new_name:
            data["name"] = args.new_name
        if args.description is not None:
            data["description"] = args.description
        if args.enabled is not None:
            data["enabled"] = args.enabled
        return r.channel_dict(r.update_channel(s, row, parse(r.ChannelPatch, data)))

    return apply_change(args, change)


def _notify_conditions(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.decisions:
        out["decisions"] = csv_list(args.decisions)
    if args.priority_at_least:
        out["priority_at_least"] = args.priority_at_least
    if args.probability:
        cls, sep, threshold = args.probability.partition(">")
        if not sep:
            raise Refused("probability", f"{args.probability!r} is not CLASS>THRESHOLD, e.g. covid>0.5")
        out["probability_class"] = cls.strip()
        try:
            out["probability_above"] = float(threshold)
        except ValueError:
            raise Refused("probability", f"{threshold!r} is not a number") from None
    if args.local_ae:
        out["local_ae"] = csv_list(args.local_ae)
    return out


def cmd_add_notify_rule(args: argparse.Namespace) -> int:
    def change(s: Session) -> dict[str, Any]:
        data = {
            "name": args.name,
            "channels": csv_list(args.channels),
            "conditions": _notify_conditions(args),
            "enabled": not args.disabled,
            "description": args.description or "",
        }
        return r.notify_rule_dict(r.add_notify_rule(s, parse(r.NotifyRuleIn, data)))

    return apply_change(args, change)


def cmd_update_notify_rule(args: argparse.Namespace) -> int:
    def change(s: Session) -> dict[str, Any]:
        row = r.named(s, NotificationRule, args.name, "notification rule")
        data: dict[str, Any] = {}
        if args.channels:
            data["channels"] = csv_list(args.channels)
        conditions = _notify_conditions(args)
        if conditions or args.replace_conditions:
            data["conditions"] = conditions if args.replace_conditions else {**dict(row.conditions or {}), **conditions}
        if args.new_name:
            data["name"] = args.new_name
        if args.description is not None:
            data["description"] = args.description
        if args.enabled is not None:
            data["enabled"] = args.enabled
        return r.notify_rule_dict(r.update_notify_rule(s, row, parse(r.NotifyRulePatch, data)))

    return apply_change(args, change)


def cmd_test_channel(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    db = database_from(settings)
    try:
        with db.session() as s:
            row = r.named(s, NotificationChannel, args.name, "channel")
            kind, channel_settings = row.kind, dict(row.settings or {})
    finally:
        db.dispose()
    n = settings.notify
    note = {**sample(), "delivery_id": f"TEST-{os.getpid()}"}
    delivery = send(kind, channel_settings, note, SendOptions(n.timeout_seconds, n.hl7_application, n.hl7_facility))
    if delivery.outcome != "done":
        raise Unavailable(f"channel {args.name}: a sample notification was not delivered: {delivery.detail}")
    print(f"channel {args.name}: a sample notification was delivered ({delivery.detail})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args), migrate=False)
    try:
        with db.session() as s:
            data = {
                "priority_rules": [
                    r.priority_rule_dict(row) for row in s.scalars(select(PriorityRule).order_by(PriorityRule.name))
                ],
                "channels": [
                    r.channel_dict(row)
                    for row in s.scalars(select(NotificationChannel).order_by(NotificationChannel.name))
                ],
                "notify_rules": [
                    r.notify_rule_dict(row)
                    for row in s.scalars(select(NotificationRule).order_by(NotificationRule.name))
                ],
            }
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("Priority rules (the most urgent matching rule sets a job's priority; none: routine):")
    print_table(
        ("NAME", "PRIORITY", "STATE", "WHEN"),
        (
            (
                rule["name"],
                rule["priority"],
                "enabled" if rule["enabled"] else "disabled",
                "; ".join(f"{k}={v}" for k, v in rule["conditions"].items()) or "every series",
            )
            for rule in data["priority_rules"]
        ),
        empty="  none: every job is routine; add one with dicom-node triage add-priority-rule NAME --priority stat ...",
    )
    print("\nNotification channels:")
    print_table(
        ("NAME", "KIND", "STATE", "WHERE"),
        (
            (
                c["name"],
                c["kind"],
                "enabled" if c["enabled"] else "disabled",
                c["settings"].get("url")
                or ", ".join(c["settings"].get("recipients") or [])
                or f"{c['settings'].get('host')}:{c['settings'].get('port')}",
            )
            for c in data["channels"]
        ),
        empty="  none: dicom-node triage add-channel NAME --kind hl7|webhook|email ...",
    )
    print("\nNotification rules (each matching rule notifies its channels once per result):")
    print_table(
        ("NAME", "CHANNELS", "STATE", "WHEN"),
        (
            (
                rule["name"],
                ",".join(rule["channels"]),
                "enabled" if rule["enabled"] else "disabled",
                "; ".join(f"{k}={v}" for k, v in rule["conditions"].items()) or "every finished job",
            )
            for rule in data["notify_rules"]
        ),
        empty="  none: nothing is notified; dicom-node triage add-notify-rule NAME --channels C --decisions covid ...",
    )
    return 0


def _condition_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("conditions (all that are given must hold; patterns: regular expressions, any case)")
    g.add_argument("--calling-ae", metavar="A[,B]", help="sent by one of these calling AE titles")
    g.add_argument("--local-ae", metavar="A[,B]", help="received by one of these local AE titles")
    g.add_argument(
        "--requested-priority", metavar="P[,P]", help="Requested Procedure Priority: STAT, HIGH, ROUTINE, MEDIUM, LOW"
    )
    g.add_argument("--store-priority", metavar="P[,P]", help="the C-STORE priority it was sent with: HIGH, MEDIUM, LOW")
    g.add_argument("--location-pattern", metavar="RE", help="Current Patient Location (or Institution Residence)")
    g.add_argument("--admission-pattern", metavar="RE", help="Admission ID")
    g.add_argument("--study-pattern", metavar="RE", help="Study Description")
    g.add_argument("--series-pattern", metavar="RE", help="Series Description")


def _channel_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (hl7: host, port; webhook: url, secret; email: host, sender, to)")
    g.add_argument("--host")
    g.add_argument("--port", type=int)
    g.add_argument("--receiving-application", help="hl7: MSH-5")
    g.add_argument("--receiving-facility", help="hl7: MSH-6")
    g.add_argument("--url", help="webhook: where to POST")
    g.add_argument("--secret", help="webhook: the HMAC-SHA256 key (16+ characters)")
    g.add_argument("--secret-env", metavar="VAR", help="webhook: the key from this environment variable")
    g.add_argument("--template-file", metavar="FILE", help="webhook: a Jinja2 template of the JSON body")
    g.add_argument("--sender", help="email: From")
    g.add_argument("--to", metavar="A[,B]", help="email: recipients")
    g.add_argument("--no-starttls", action="store_true", help="email: send without STARTTLS (not recommended)")
    g.add_argument("--username", help="email: SMTP login")
    g.add_argument("--password-env", metavar="VAR", help="email: the SMTP password from this environment variable")
    g.add_argument("--subject-template", help="email: a Jinja2 template of the subject")
    g.add_argument("--body-template-file", metavar="FILE", help="email: a Jinja2 template of the body")
    g.add_argument("--ca-file", help="webhook or email: CA bundle of a server signed by a private CA")
    g.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other setting (docs/triage.md)")


def _notify_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("conditions (all that are given must hold)")
    g.add_argument(
        "--decisions",
        metavar="D[,D]",
        help="covid, cap, normal, indeterminate, no_decision, failed (the analysis failed)",
    )
    g.add_argument("--priority-at-least", choices=LEVELS, help="the job's priority is this or more urgent")
    g.add_argument("--probability", metavar="CLASS>P", help="a class probability above P, e.g. covid>0.5")
    g.add_argument("--local-ae", metavar="A[,B]", help="received by one of these local AE titles")


def register(sub: argparse._SubParsersAction) -> None:
    triage = command(
        sub,
        "triage",
        "priority rules, notification channels and notification rules",
        """
        dicom-node triage list
        dicom-node triage add-priority-rule emergency --priority stat --calling-ae ER_CT
        dicom-node triage add-channel ris --kind hl7 --host 10.1.2.3 --port 2575
        dicom-node triage add-notify-rule suspicious --channels ris --decisions covid,cap
        """,
        description="Triage: the rules that give a job its priority (stat, high, routine, low), and who is told "
        "of which results (HL7 v2 to a RIS, webhooks, e-mail)",
    )
    t_sub = triage.add_subparsers(dest="triage_command", metavar="ACTION", required=True)

    p = command(t_sub, "list", "the priority rules, notification channels and rules", "dicom-node triage list --json")
    p.add_argument("--json", action="store_true", help="JSON for programs instead of tables")
    p.set_defaults(handler=cmd_list)

    p = command(
        t_sub,
        "add-priority-rule",
        "a rule that sets the priority of the jobs it matches",
        """
        dicom-node triage add-priority-rule emergency --priority stat --calling-ae ER_CT
        dicom-node triage add-priority-rule ed --priority stat --location-pattern '^(ED|EMERG)'
        dicom-node triage add-priority-rule requested-stat --priority stat --requested-priority STAT
        dicom-node triage add-priority-rule research --priority low --local-ae RESEARCH
        """,
    )
    p.add_argument("name")
    p.add_argument("--priority", required=True, choices=LEVELS, help="what the jobs it matches get (at least)")
    p.add_argument("--description", help="what the rule is for")
    p.add_argument("--disabled", action="store_true", help="add it switched off")
    _condition_options(p)
    p.set_defaults(handler=cmd_add_priority_rule)

    p = command(
        t_sub,
        "update-priority-rule",
        "change a priority rule (conditions not named are kept)",
        """
        dicom-node triage update-priority-rule emergency --calling-ae ER_CT,ER_CT2
        dicom-node triage update-priority-rule emergency --disable
        """,
    )
    p.add_argument("name")
    p.add_argument("--new-name")
    p.add_argument("--priority", choices=LEVELS)
    p.add_argument("--description")
    p.add_argument("--replace-conditions", action="store_true", help="drop the conditions not given here")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False)
    _condition_options(p)
    p.set_defaults(handler=cmd_update_priority_rule)

    p = command(
        t_sub,
        "add-channel",
        "a place notifications go: hl7 (a RIS over MLLP), webhook or email",
        """
        dicom-node triage add-channel ris --kind hl7 --host 10.1.2.3 --port 2575 --receiving-application RIS
        dicom-node triage add-channel chat --kind webhook --url https://hooks.example/x --secret-env HOOK_SECRET
        dicom-node triage add-channel radiology --kind email --host smtp.example.org --port 587 \\
            --sender node@example.org --to ct-reading@example.org --username node --password-env SMTP_PASSWORD
        """,
    )
    p.add_argument("name")
    p.add_argument("--kind", required=True, choices=KINDS)
    _channel_options(p)
    p.add_argument("--description")
    p.add_argument("--disabled", action="store_true", help="add it switched off")
    p.set_defaults(handler=cmd_add_channel)

    p = command(
        t_sub,
        "update-channel",
        "change a channel (settings not named are kept)",
        "dicom-node triage update-channel ris --port 2576",
    )
    p.add_argument("name")
    p.add_argument("--new-name")
    _channel_options(p)
    p.add_argument("--description")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False)
    p.set_defaults(handler=cmd_update_channel)

    p = command(
        t_sub,
        "test-channel",
        "send a sample notification to a channel now and say what its endpoint answered",
        "dicom-node triage test-channel ris",
    )
    p.add_argument("name")
    p.set_defaults(handler=cmd_test_channel)

    p = command(
        t_sub,
        "add-notify-rule",
        "which finished jobs are notified to which channels",
        """
        dicom-node triage add-notify-rule suspicious --channels ris,radiology --decisions covid,cap
        dicom-node triage add-notify-rule failures --channels radiology --decisions failed,no_decision
        dicom-node triage add-notify-rule likely-covid --channels chat --probability 'covid>0.8' \\
            --priority-at-least high
        """,
    )
    p.add_argument("name")
    p.add_argument("--channels", required=True, metavar="C[,C]", help="the channels it notifies")
    _notify_options(p)
    p.add_argument("--description")
    p.add_argument("--disabled", action="store_true", help="add it switched off")
    p.set_defaults(handler=cmd_add_notify_rule)

    p = command(
        t_sub,
        "update-notify-rule",
        "change a notification rule (conditions not named are kept)",
        "dicom-node triage update-notify-rule suspicious --decisions covid,cap,indeterminate",
    )
    p.add_argument("name")
    p.add_argument("--new-name")
    p.add_argument("--channels", metavar="C[,C]")
    p.add_argument("--replace-conditions", action="store_true", help="drop the conditions not given here")
    _notify_options(p)
    p.add_argument("--description")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False)
    p.set_defaults(handler=cmd_update_notify_rule)

    p = command(
        t_sub,
        "remove",
        "remove a priority rule, a channel or a notification rule",
        """
        dicom-node triage remove priority-rule research
        dicom-node triage remove channel chat
        """,
    )
    p.add_argument("kind", choices=list(_REMOVABLE))
    p.add_argument("name")
    p.set_defaults(handler=cmd_remove)
