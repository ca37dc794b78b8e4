"""Database access: one engine per process, sessions from it, Alembic migrations."""

from dicom_node.db.engine import (
    Database,
    DatabaseNotMigrated,
    DatabaseUnavailable,
    DatabaseURLError,
    check_schema,
    upgrade,
)

__all__ = ["Database", "DatabaseNotMigrated", "DatabaseURLError", "DatabaseUnavailable", "check_schema", "upgrade"]
