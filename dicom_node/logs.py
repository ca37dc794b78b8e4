"""Logging set-up of each process: the console (stderr) and a file under the data dir.

The console is for a person: one line per event a user cares about (an association accepted or
refused, a series complete, a job started or done, an export done or failed), the time and the
process, the level only when it is a warning or an error. The node's own loggers (``dicom_node``,
``worker``, ``model``) log at ``log_level``; everything else (Celery, kombu, highdicom,
pynetdicom, uvicorn, alembic ...) at WARNING, unless ``log_level`` is DEBUG (``dicom-node -v``),
when they log at INFO and the node's own details appear too.

``log_format: json`` writes one JSON object per line instead, for log collectors (console and
file alike): ``time`` (UTC, ISO 8601), ``level``, ``process``, ``pid``, ``logger``, ``message``
and ``exception`` when there is one.

Every process of the node appends to one file, ``logs/dicom-node.log``; ``serve`` rotates it
(:func:`rotate`, ``log_max_mb`` and ``log_keep_files``), and each process's handler follows the
new file at its next line, as it would after logrotate.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import multiprocessing
import os
from pathlib import Path

from dicom_node.settings import Settings

# The loggers of this project; every other logger is third-party.
OWN_LOGGERS = ("dicom_node", "worker", "model")
FILE_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"
LOG_FILE = "dicom-node.log"


class ConsoleFormatter(logging.Formatter):
    """``12:03:04 worker    job 3 done: ...``; ``WARNING``/``ERROR`` shown only when it is one."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        line = f"{self.formatTime(record, self.datefmt)} {record.processName:<9} {level}{record.getMessage()}"
        if record.exc_info:
            # Only with -v: the cause of an unexpected error, for a bug report.
            if logging.getLogger(OWN_LOGGERS[0]).isEnabledFor(logging.DEBUG):
                line += "\n" + self.formatException(record.exc_info)
            else:
                line += (
                    f" ({record.exc_info[1].__class__.__name__}: {record.exc_info[1]}; run with -v for the traceback)"
                )
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": record.processName,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(settings: Settings, *, process_name: str | None = None) -> None:
    if process_name:
        multiprocessing.current_process().name = process_name
    verbose = settings.log_level == "DEBUG"
    root = logging.getLogger()
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(settings.log_level)
    # pynetdicom logs every PDU at INFO: only with -v.
    logging.getLogger("pynetdicom").setLevel(logging.INFO if verbose else logging.WARNING)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    json_lines = settings.log_format == "json"
    stream = logging.StreamHandler()
    stream.setFormatter(JsonFormatter() if json_lines else ConsoleFormatter())
    root.addHandler(stream)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    # All processes append to one file (O_APPEND keeps lines whole); rotate it with logrotate,
    # which the watched handler follows.
    file_handler = logging.handlers.WatchedFileHandler(settings.log_dir / LOG_FILE)
    file_handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(FILE_FORMAT))
    root.addHandler(file_handler)
    # Python warnings (Celery's "running with superuser privileges", library deprecations)
    # only with -v.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


def rotate(log_dir: Path, *, max_bytes: int, keep: int) -> bool:
    """Once the log file passes ``max_bytes``: ``dicom-node.log`` becomes ``.1``, ``.1`` becomes
    ``.2`` and so on, the oldest beyond ``keep`` removed. Returns whether it rotated. The processes
    writing it open the new file at their next line (WatchedFileHandler); a line written meanwhile
    goes to ``.1``, none is lost."""
    current = log_dir / LOG_FILE
    try:
        if current.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    (log_dir / f"{LOG_FILE}.{keep}").unlink(missing_ok=True)
    for n in range(keep - 1, 0, -1):
        older = log_dir / f"{LOG_FILE}.{n}"
        if older.exists():
            os.replace(older, log_dir / f"{LOG_FILE}.{n + 1}")
    os.replace(current, log_dir / f"{LOG_FILE}.1")
    logging.getLogger(__name__).info("log file rotated (over %d MB)", max_bytes // 2**20)
    return True
