"""``dicom-node admin``: users and API tokens, from the server's shell.

    dicom-node admin create-user NAME --role admin|viewer [--password-stdin]
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

from dicom_node.admin import audit
from dicom_node.admin.auth import AuthError, Passwords, check_password, create_token, create_user, find_user, revoke_token, set_password, token_dict, user_dict
from dicom_node.commands.common import database_from, fail, settings_from
from dicom_node.configuration import cli_actor
from dicom_node.db.models import ApiToken, User


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise SystemExit(fail("no terminal to ask for the password; use --password-stdin"))
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise SystemExit(fail("the two passwords differ"))
    return first


def _run(args: argparse.Namespace, change: Callable[[Any, str], Any]) -> int:
    db = database_from(settings_from(args))
    try:
        with db.session() as s:
            result = change(s, cli_actor())
    except AuthError as exc:
        return fail(f"refused: {exc}")
    finally:
        db.dispose()
    if result is not None:
        print(result if isinstance(result, str) else json.dumps(result, default=str))
    return 0


def cmd_create_user(args: argparse.Namespace) -> int:
    password = _password(args)
    ok, reason = check_password(password)
    if not ok:
        return fail(f"refused: password: {reason}")

    def change(s: Any, actor: str) -> Any:
        if args.name is None:
            raise AuthError("name", "must not be empty")
        user = create_user(s, Passwords(), args.name, args.role, password)
        out = user_dict(user)
        audit.record(s, actor, "user.create", target_type="user", target_id=user.id, target=user.name, after=out, via="cli")
        return out

    return _run(args, change)


def cmd_set_password(args: argparse.Namespace) -> int:
    password = _password(args)
    ok, reason = check_password(password)
    if not ok:
        return fail(f"refused: password: {reason}")

    def change(s: Any, actor: str) -> Any:
        user = find_user(s, args.name)
        set_password(s, Passwords(), user, password)
        audit.record(s, actor, "user.set_password", target_type="user", target_id=user.id, target=user.name, via="cli")
        return f"password of {user.name} changed; their sessions have ended"

    return _run(args, change)


def cmd_list_users(args: argparse.Namespace) -> int:

    db = database_from(settings_from(args))
    with db.session() as s:
        users = [user_dict(u) for u in s.scalars(select(User).order_by(User.name))]
    db.dispose()
    if args.json:
        print(json.dumps(users, default=str, indent=2))
        return 0
    for u in users:
        state = "enabled" if u["enabled"] else "disabled"
        print(f"{u['name']:<24} {u['role']:<7} {state:<8} last login {u['last_login_at'] or '-'}")
    return 0


def cmd_create_token(args: argparse.Namespace) -> int:
    def change(s: Any, actor: str) -> Any:
        user = find_user(s, args.user)
        row, raw = create_token(s, user, args.name or "", created_by=actor)
        out = token_dict(row)
        audit.record(s, actor, "token.create", target_type="token", target_id=row.id, target=f"{row.name} ({user.name})", after=out, via="cli")
        if args.json:
            return {**out, "token": raw}
        print(f"token {row.id} for {user.name} ({user.role}); it is not shown again:", file=sys.stderr)
        return raw

    return _run(args, change)


def cmd_list_tokens(args: argparse.Namespace) -> int:

    db = database_from(settings_from(args))
    with db.session() as s:
        tokens = [token_dict(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.id))]
    db.dispose()
    if args.json:
        print(json.dumps(tokens, default=str, indent=2))
        return 0
    for t in tokens:
        state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "active"
        print(f"{t['id']:>4}  {t['prefix']}…  {t['user']:<16} {str(t['name'])[:30]:<30} {state}")
    return 0


def cmd_revoke_token(args: argparse.Namespace) -> int:
    def change(s: Any, actor: str) -> Any:
        row = revoke_token(s, args.id, revoked_by=actor)
        out = token_dict(row)
        audit.record(s, actor, "token.revoke", target_type="token", target_id=row.id, target=f"{row.name} ({row.user.name})", after=out, via="cli")
        return f"token {row.id} revoked"

    return _run(args, change)


def register(sub: argparse._SubParsersAction) -> None:
    admin = sub.add_parser("admin", help="users and API tokens of the admin pages and API")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)

    p = admin_sub.add_parser("create-user", help="add a user (there is no default user)")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=["admin", "viewer"], help="admin: changes things; viewer: reads")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of standard input")
    p.set_defaults(handler=cmd_create_user)

    p = admin_sub.add_parser("set-password", help="change a user's password (ends their sessions)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(handler=cmd_set_password)

    p = admin_sub.add_parser("list-users", help="users and their roles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list_users)

    p = admin_sub.add_parser("create-token", help="a bearer token for the REST API, acting as USER (printed once)")
    p.add_argument("user", help="the user whose role the token carries")
    p.add_argument("--name", default="", help="what the token is for")
    p.add_argument("--json", action="store_true", help="print the token's record with the token as JSON")
    p.set_defaults(handler=cmd_create_token)

    p = admin_sub.add_parser("list-tokens", help="API tokens (never the tokens themselves)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list_tokens)

    p = admin_sub.add_parser("revoke-token", help="revoke an API token by its id")
    p.add_argument("id", type=int)
    p.set_defaults(handler=cmd_revoke_token)
