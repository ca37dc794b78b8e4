"""``dicom-node db upgrade`` and ``db reindex``."""

from __future__ import annotations

import argparse

from dicom_node.commands.common import database_from, redact, settings_from
from dicom_node.db import upgrade
from dicom_node.storage.files import Storage
from dicom_node.storage.recovery import recover_index


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    upgrade(settings.effective_database_url)
    print(f"database at {redact(settings.effective_database_url)} is up to date")
    return 0


def cmd_db_reindex(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    db = database_from(settings)
    added = recover_index(Storage(settings.storage_dir), db)
    db.dispose()
    print(f"indexed {added} stored instance(s) the index did not know")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    p = db_sub.add_parser("upgrade", help="create or migrate the database to the current schema")
    p.set_defaults(handler=cmd_db_upgrade)
    p = db_sub.add_parser("reindex", help="index stored files the database does not know (after a crash)")
    p.set_defaults(handler=cmd_db_reindex)
