"""What every sub-command shares: the settings, the database, the way a command fails."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy.engine import make_url

from dicom_node.configuration import ConfigError
from dicom_node.db import Database, upgrade
from dicom_node.settings import Settings, SettingsError, load_settings


def settings_from(args: argparse.Namespace) -> Settings:
    """Load settings once for a command; exit 2 naming the bad field."""
    try:
        return load_settings(getattr(args, "config", None))
    except SettingsError as exc:
        print(f"dicom-node: invalid settings:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def database_from(settings: Settings) -> Database:
    """The database of ``settings``, migrated to the current schema first."""
    upgrade(settings.effective_database_url)
    return Database(settings.effective_database_url)


def fail(message: str) -> int:
    print(f"dicom-node: {message}", file=sys.stderr)
    return 2


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def json_arg(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(name.lstrip("-"), f"is not JSON: {exc}") from None


def redact(url: str) -> str:
    """A database or broker URL without its password."""
    if url.startswith(("redis", "rediss")):
        return url.split("@")[-1] if "@" in url else url
    return make_url(url.split("+", 1)[1] if url.startswith("sqla+") else url).render_as_string(hide_password=True)
