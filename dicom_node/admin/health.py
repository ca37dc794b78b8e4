"""/health: is the node able to do its work right now? (Public: it names no URL, path or secret.)

Four checks, each with its own answer: the database answers a query; the broker accepts a
connection (settings.effective_broker_url); the data dir has more free space than
settings.listener.min_free_disk_mb (below it, C-STORE answers "out of resources"); every enabled
local AE accepts TCP connections on its port (a plain connect: a C-ECHO would be refused by the
allow-list and leave an event behind at every probe) and its listeners report no error binding it
(a port another program or another node holds answers a connect too).
"""

from __future__ import annotations

import shutil
import socket
import time
from typing import Any

import sqlalchemy as sa
from kombu import Connection
from kombu.exceptions import OperationalError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.db import Database
from dicom_node.db.models import LocalAE
from dicom_node.settings import Settings

TIMEOUT_SECONDS = 2.0


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 1)


def check_database(db: Database) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        with db.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        return {"ok": False, "error": str(exc).splitlines()[0][:300], "ms": _ms(start)}
    return {"ok": True, "dialect": db.engine.dialect.name, "ms": _ms(start)}


def check_broker(url: str) -> dict[str, Any]:
    """Connect to the broker. kombu's SQLAlchemy transport (``sqla+<database url>``) is checked
    with a query on that database; anything else with kombu's own connection."""
    start = time.perf_counter()
    if url.startswith("sqla+"):
        database_url = url.removeprefix("sqla+")
        engine_kwargs: dict[str, Any] = {}
        if make_url(database_url).get_backend_name() == "sqlite":
            engine_kwargs["connect_args"] = {"timeout": TIMEOUT_SECONDS}
        engine = sa.create_engine(database_url, **engine_kwargs)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:
            return {"ok": False, "error": str(exc).splitlines()[0][:300], "ms": _ms(start)}
        finally:
            engine.dispose()
        return {"ok": True, "ms": _ms(start)}

    try:
        with Connection(url, connect_timeout=TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(max_retries=1, timeout=TIMEOUT_SECONDS)
    except (OperationalError, OSError) as exc:
        return {"ok": False, "error": str(exc)[:300], "ms": _ms(start)}
    return {"ok": True, "ms": _ms(start)}


def check_disk(settings: Settings) -> dict[str, Any]:
    path = settings.data_dir
    usage = shutil.disk_usage(path if path.exists() else path.parent)
    free_mb = usage.free // (1024 * 1024)
    minimum = settings.listener.min_free_disk_mb
    return {"ok": free_mb > minimum, "free_mb": int(free_mb), "min_free_mb": minimum}


def _probe_host(listen_host: str) -> str:
    return "127.0.0.1" if listen_host in ("0.0.0.0", "") else "::1" if listen_host == "::" else listen_host


def check_listeners(settings: Settings, db: Database) -> dict[str, Any]:
    host = _probe_host(settings.listener.host)
    try:
        with db.engine.connect() as conn:
            aes = conn.execute(
                sa.select(LocalAE.title, LocalAE.port, LocalAE.listen_error)
                .where(LocalAE.enabled.is_(True))
                .order_by(LocalAE.port)
            ).all()
    except SQLAlchemyError as exc:
        return {"ok": False, "error": f"could not read the local AEs: {str(exc).splitlines()[0][:200]}", "aes": []}
    out = []
    for title, port, listen_error in aes:
        if listen_error:
            # The listeners could not bind it: whoever answers on that port is not this node.
            out.append({"title": title, "port": port, "ok": False, "error": f"error: {listen_error}"})
            continue
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS):
                out.append({"title": title, "port": port, "ok": True})
        except OSError as exc:
            out.append({"title": title, "port": port, "ok": False, "error": exc.strerror or str(exc)})
    return {"ok": all(a["ok"] for a in out), "host": host, "aes": out}


def health(settings: Settings, db: Database) -> dict[str, Any]:
    """All checks; ``status`` is "ok" only when every one passes."""
    checks = {
        "database": check_database(db),
        "broker": check_broker(settings.effective_broker_url),
        "disk": check_disk(settings),
        "listeners": check_listeners(settings, db),
    }
    return {"status": "ok" if all(c["ok"] for c in checks.values()) else "fail", "checks": checks}
