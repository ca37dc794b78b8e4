"""``dicom-node admin``: users and API tokens, from the server's shell.

    dicom-node admin create-user NAME --role admin|viewer|radiologist [--password-stdin]
    dicom-node admin set-password NAME [--password-stdin]
    dicom-node admin list-users [--json]
    dicom-node admin create-token USER [--name TEXT]      (prints the token once)
    dicom-node admin list-tokens [--json]
    dicom-node admin revoke-token ID

Passwords come from a prompt (asked twice) or, with --password-stdin, from the first line of
standard input; never from the command line, where other users could read them. Every change is
written to the audit log as ``cli:<os user>``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any, Callable

from sqlalchemy import select

from dicom_node.admin import audit, tokens
from dicom_node.admin.auth import (
    Passwords,
    create_user,
    find_user,
    set_password,
    token_dict,
    user_dict,
)
from dicom_node.commands.common import clip, command, database_from, print_table, settings_from, utc_time
from dicom_node.configuration import cli_actor
from dicom_node.db.models import ApiToken, User
from dicom_node.errors import Invalid
from dicom_node.validation import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, ROLES, check_password, require


def _password(args: argparse.Namespace) -> str:
    """The new password, checked against the rule before it is asked a second time."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        raise Invalid("no terminal to ask for the password; use --password-stdin")
    else:
        print(f"The password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long.", file=sys.stderr)
        password = getpass.getpass("Password: ")
    require("password", check_password, password)
    if not args.password_stdin and password != getpass.getpass("Again: "):
        raise Invalid("the two passwords differ")
    return password


def _run(args: argparse.Namespace, change: Callable[[Any, str], Any]) -> int:
    db = database_from(settings_from(args))
    try:
        with db.session() as s:
            result = change(s, cli_actor())
    finally:
        db.dispose()
    if result is not None:
        print(result if isinstance(result, str) else json.dumps(result, default=str))
    return 0


def cmd_create_user(args: argparse.Namespace) -> int:
    password = _password(args)

    def change(s: Any, actor: str) -> Any:
        user = create_user(s, Passwords(), args.name, args.role, password)
        out = user_dict(user)
        audit.record(
            s, actor, "user.create", target_type="user", target_id=user.id, target=user.name, after=out, via="cli"
        )
        return out

    return _run(args, change)


def cmd_set_password(args: argparse.Namespace) -> int:
    password = _password(args)

    def change(s: Any, actor: str) -> Any:
        user = find_user(s, args.name)
        set_password(s, Passwords(), user, password)
        audit.record(s, actor, "user.set_password", target_type="user", target_id=user.id, target=user.name, via="cli")
        return f"password of {user.name} changed; their sessions have ended"

    return _run(args, change)


def cmd_list_users(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args), migrate=False)
    try:
        with db.session() as s:
            users = [user_dict(u) for u in s.scalars(select(User).order_by(User.name))]
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(users, default=str, indent=2))
        return 0
    print_table(
        ("NAME", "ROLE", "STATE", "LAST LOGIN"),
        (
            (u["name"], u["role"], "enabled" if u["enabled"] else "disabled", utc_time(u["last_login_at"]))
            for u in users
        ),
        empty="no users yet: dicom-node admin create-user NAME --role admin",
    )
    return 0


def cmd_create_token(args: argparse.Namespace) -> int:
    def change(s: Any, actor: str) -> Any:
        out, raw, user = tokens.issue(s, actor, args.user, args.name or "", via="cli")
        if args.json:
            return {**out, "token": raw}
        print(f"token {out['id']} for {user.name} ({user.role}); it is not shown again:", file=sys.stderr)
        return raw

    return _run(args, change)


def cmd_list_tokens(args: argparse.Namespace) -> int:
    db = database_from(settings_from(args), migrate=False)
    try:
        with db.session() as s:
            tokens = [token_dict(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.id))]
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(tokens, default=str, indent=2))
        return 0
    print_table(
        ("ID", "STARTS WITH", "USER", "FOR", "CREATED", "STATE"),
        (
            (
                t["id"],
                f"{t['prefix']}…",
                t["user"],
                clip(str(t["name"]), 30),
                utc_time(t["created_at"]),
                f"revoked {utc_time(t['revoked_at'])}" if t["revoked_at"] else "active",
            )
            for t in tokens
        ),
        empty="no API tokens: dicom-node admin create-token USER --name WHAT-FOR",
    )
    return 0


def cmd_revoke_token(args: argparse.Namespace) -> int:
    def change(s: Any, actor: str) -> Any:
        out = tokens.withdraw(s, actor, args.id, via="cli")
        return f"token {out['id']} revoked"

    return _run(args, change)


def register(sub: argparse._SubParsersAction) -> None:
    admin = command(
        sub,
        "admin",
        "users and API tokens of the admin pages and API",
        "dicom-node admin create-user alice --role admin",
        description="Users and API tokens of the admin pages and REST API (admins can also manage users in the pages)",
    )
    admin_sub = admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True)

    rule = (
        f"The password is asked for on the terminal ({MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters), "
        "or read from standard input with --password-stdin"
    )
    p = command(
        admin_sub,
        "create-user",
        "add a user (there is no default user)",
        """
        dicom-node admin create-user alice --role admin
        printf '%s\\n' "$PASSWORD" | dicom-node admin create-user bob --role viewer --password-stdin
        """,
        description=f"Add a user of the admin pages and API (there is no default user). {rule}",
    )
    p.add_argument("name")
    p.add_argument(
        "--role",
        required=True,
        choices=ROLES,
        help="admin: changes things; viewer: reads; radiologist: the triage worklist only (reviews results); "
        "sender: STOW-RS only, to the local AEs that allow its token (ae update-local TITLE --stow-tokens ID)",
    )
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of standard input"
    )
    p.set_defaults(handler=cmd_create_user)

    p = command(
        admin_sub,
        "set-password",
        "change a user's password (ends their sessions)",
        "dicom-node admin set-password alice",
        description=f"Change a user's password; their sessions end. {rule}",
    )
    p.add_argument("name")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of standard input"
    )
    p.set_defaults(handler=cmd_set_password)

    p = command(admin_sub, "list-users", "users and their roles", "dicom-node admin list-users --json")
    p.add_argument("--json", action="store_true", help="JSON for programs instead of a table")
    p.set_defaults(handler=cmd_list_users)

    p = command(
        admin_sub,
        "create-token",
        "a bearer token for the REST API, acting as USER (printed once)",
        """
        TOKEN=$(dicom-node admin create-token alice --name monitoring)
        curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/api/jobs
        """,
    )
    p.add_argument("user", help="the user whose role the token carries")
    p.add_argument("--name", default="", help="what the token is for")
    p.add_argument("--json", action="store_true", help="print the token's record with the token as JSON")
    p.set_defaults(handler=cmd_create_token)

    p = command(admin_sub, "list-tokens", "API tokens (never the tokens themselves)", "dicom-node admin list-tokens")
    p.add_argument("--json", action="store_true", help="JSON for programs instead of a table")
    p.set_defaults(handler=cmd_list_tokens)

    p = command(admin_sub, "revoke-token", "revoke an API token by its id", "dicom-node admin revoke-token 3")
    p.add_argument("id", type=int)
    p.set_defaults(handler=cmd_revoke_token)
