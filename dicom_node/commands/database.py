"""``dicom-node db upgrade`` and ``db reindex``."""

from __future__ import annotations

import argparse

from dicom_node.commands.common import Progress, command, database_from, redact, settings_from
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
    progress = Progress("checking stored series", "series")
    try:
        added = recover_index(Storage(settings.storage_dir), db, progress=progress)
    finally:
        progress.close()
        db.dispose()
    print(f"indexed {added} stored instance(s) the index did not know")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    db = command(sub, "db", "database maintenance", "dicom-node db upgrade", description="Database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    p = command(
        db_sub,
        "upgrade",
        "create or migrate the database to the current schema",
        """
        dicom-node db upgrade
        DICOM_NODE_DATABASE_URL=postgresql://dicom:secret@db.example.org/dicom_node dicom-node db upgrade
        """,
        description="Create or migrate the database (database_url; SQLite under the data dir when unset) to the "
        "current schema. Every command does it first; this is for doing it alone, e.g. before starting several "
        "machines",
    )
    p.set_defaults(handler=cmd_db_upgrade)
    p = command(
        db_sub,
        "reindex",
        "index stored files the database does not know (after a crash)",
        "dicom-node db reindex",
        description="Index stored files the database does not know, e.g. after a power cut rolled back SQLite's "
        "last commits ('serve' does it by itself after an unclean stop). Shows progress on a terminal",
    )
    p.set_defaults(handler=cmd_db_reindex)
