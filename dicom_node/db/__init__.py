"""Database access: one engine per process, sessions from it, Alembic migrations."""

from dicom_node.db.engine import Database, upgrade

__all__ = ["Database", "upgrade"]
