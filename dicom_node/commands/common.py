"""What every sub-command shares: the settings, the database, tables and examples in the help.

A command fails by raising one of dicom_node.errors' kinds; dicom_node.cli prints its one line
and exits 2."""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import json
import socket
import sys
import textwrap
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from tqdm import tqdm

from dicom_node.configuration import audit_changes, cli_actor
from dicom_node.db import Database, check_schema, upgrade
from dicom_node.db.times import as_utc
from dicom_node.errors import Refused, Unavailable
from dicom_node.settings import Settings, load_settings


def settings_from(args: argparse.Namespace) -> Settings:
    """Load settings once for a command (SettingsError names every bad field)."""
    return load_settings(getattr(args, "config", None))


def database_from(settings: Settings, *, migrate: bool = True) -> Database:
    """The database of ``settings``, migrated to the current schema first; a command that only
    reads (``migrate=False``) changes nothing and says to run ``db upgrade`` when it is not."""
    if migrate:
        upgrade(settings.effective_database_url)
    else:
        check_schema(settings.effective_database_url)
    return Database(settings.effective_database_url)


def apply_change(args: argparse.Namespace, change: Callable[[Any], Any]) -> int:
    """Run ``change(session)`` in one audited transaction (actor ``cli:<os user>``) and print its
    result as JSON."""
    db = database_from(settings_from(args))
    try:
        with db.session() as s:
            audit_changes(s, cli_actor(), via="cli")
            result = change(s)
    finally:
        db.dispose()
    print(json.dumps(result, default=str))
    return 0


def check_port_free(host: str, port: int, what: str, fix: str) -> None:
    """Raise Unavailable when another program listens on ``port`` (a bind without SO_REUSEPORT
    fails even against sockets that use it, so a second node on the same port is caught too)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Unavailable(
                    f"port {port} ({what}) is in use by another program (another dicom-node?); stop it, or {fix}"
                ) from None
            if exc.errno == errno.EACCES:
                raise Unavailable(f"port {port} ({what}) needs root (ports below 1024); {fix}") from None
            raise


def command(
    sub: argparse._SubParsersAction, name: str, help: str, example: str, description: str = ""
) -> argparse.ArgumentParser:
    """A sub-command whose --help says what it does and shows an example (every command has one)."""
    return sub.add_parser(
        name,
        help=help,
        description=f"{description or help[:1].upper() + help[1:]}.",
        epilog=("examples:\n" if example.strip().count("\n") else "example:\n")
        + textwrap.indent(textwrap.dedent(example).strip("\n"), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, empty: str) -> None:
    """Columns under headers, aligned; ``empty`` (what to do next) when there is no row."""
    cells = [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    if not cells:
        print(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


class Progress:
    """A progress bar on standard error while it is a terminal; nothing when piped or logged
    (the command's result line says what was done)."""

    def __init__(self, what: str, unit: str) -> None:
        self.what = what
        self.unit = unit
        self._bar: Any = None
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = tqdm(
                total=total, desc=self.what, unit=self.unit, file=sys.stderr, leave=False, dynamic_ncols=True
            )
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def utc_time(value: object) -> str:
    """A time of the database (datetime, or its ISO text) as tables show it: UTC, to the second."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if isinstance(value, dt.datetime):
        return as_utc(value).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def json_arg(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise Refused(name.lstrip("-"), f"is not JSON: {exc}") from None


def redact(url: str) -> str:
    """A database or broker URL without its password (``redis://:***@host:6379/0``)."""
    if url.startswith("sqla+"):
        url = url.split("+", 1)[1]
    if "://" in url and "@" in url.split("://", 1)[1] and not url.startswith(("postgresql", "sqlite")):
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]
