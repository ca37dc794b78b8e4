"""Database access: one engine per process, sessions from it, Alembic migrations."""

from dicom_node.db.engine import Database, DatabaseUnavailable, DatabaseURLError, upgrade

__all__ = ["Database", "DatabaseURLError", "DatabaseUnavailable", "upgrade"]
