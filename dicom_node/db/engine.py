"""One engine per process (never one per C-STORE), SQLite or PostgreSQL by URL."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.errors import Invalid, Unavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level so that SQLAlchemy's "begin" below decides how a
    # transaction starts.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit is visible to every process at once and the database never
    # corrupts; a power cut may roll back the last commits. The stored files are fsync'ed and the
    # index is rebuilt from them after an unclean stop (dicom_node.storage.recovery), so no acknowledged
    # instance is lost, and no C-STORE waits for a second fsync.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front: several processes (listeners, completion,
    # workers) write to one file, and a deferred transaction that later upgrades to a write
    # can fail with SQLITE_BUSY instead of waiting. Readers (Database.reader) need no lock.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("read_only") else "BEGIN IMMEDIATE")


class DatabaseURLError(Invalid):
    """A database URL the node can not use; the message says why and what to write instead."""


class DatabaseUnavailable(Unavailable):
    """The database server did not answer; the message names it (without the password)."""


def safe_url(url: str) -> str:
    """The URL as it may be shown: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


def check_url(url: str) -> None:
    """Refuse, with the reason, a URL that names no supported database, a driver that is not
    installed, or a SQLite file in a folder that does not exist (a mistyped path must not
    silently start an empty database somewhere else)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseURLError(
            f"database URL {url.split('@')[-1]!r} is not a URL: write sqlite:////path/to/file.sqlite3 or postgresql://user:password@host/database"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgres":
        raise DatabaseURLError(f"database URL {safe_url(url)}: the scheme is postgresql://, not postgres://")
    if backend not in SUPPORTED_BACKENDS:
        raise DatabaseURLError(
            f"database URL {safe_url(url)}: {backend} is not supported; use sqlite:/// or postgresql://"
        )
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseURLError(
            f"database URL {safe_url(url)}: its driver is not installed ({exc}); write postgresql:// (psycopg) or "
            "postgresql+psycopg2://, both ship with the node"
        ) from None
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        folder = Path(parsed.database).expanduser().parent
        if not folder.is_dir():
            raise DatabaseURLError(
                f"database URL {url}: the folder {folder} does not exist; create it, or correct the path "
                "(sqlite:////absolute/path/file.sqlite3 has four slashes)"
            )


def make_engine(url: str, **kwargs: Any) -> Engine:
    check_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


class Database:
    """The engine and session factory of one process."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def locks_rows(self) -> bool:
        """Whether SELECT ... FOR UPDATE locks a row (PostgreSQL); SQLite's BEGIN IMMEDIATE
        (see _sqlite_begin) locks the whole file instead."""
        return self.engine.dialect.name == "postgresql"

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        with self.sessionmaker() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def reader(self) -> Iterator[Connection]:
        """A connection for reads only (on SQLite it takes no write lock)."""
        with self.engine.connect().execution_options(read_only=True) as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Any:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating a SQLite file if needed).

    Raises DatabaseURLError for a URL the node can not use and DatabaseUnavailable when the
    server does not answer, each with a message for a person."""
    check_connection(url)
    command.upgrade(alembic_config(url), revision)


class DatabaseNotMigrated(Unavailable):
    """The database exists but is not at the schema this version needs (or has none yet)."""


def check_schema(url: str) -> None:
    """Raise DatabaseNotMigrated unless the database at ``url`` is at the migrations' head; changes
    nothing (no SQLite file created, no table): what read-only commands check instead of
    :func:`upgrade`."""
    fix = "run `dicom-node db upgrade` (serve and up do it when they start)"
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        if not Path(parsed.database).is_file():
            raise DatabaseNotMigrated(f"there is no database at {parsed.database} yet: {fix}")
    check_connection(url)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        state = "has no tables yet" if current is None else f"is at revision {current}"
        raise DatabaseNotMigrated(f"the database {safe_url(url)} {state}, this version needs {head}: {fix}")


def check_connection(url: str) -> None:
    """Connect once (see :func:`upgrade` for what it raises)."""
    engine = make_engine(url)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        hint = (
            "is the folder writable?"
            if engine.dialect.name == "sqlite"
            else "is PostgreSQL running there, and are the user, password and database name right?"
        )
        raise DatabaseUnavailable(f"cannot open the database {safe_url(url)}: {_first_line(exc.orig)}; {hint}") from exc
    finally:
        engine.dispose()


def _first_line(exc: object) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
