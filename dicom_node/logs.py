"""Logging set-up of each process: stderr and a rotating file under the data dir."""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing

from dicom_node.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


def configure_logging(settings: Settings, *, process_name: str | None = None) -> None:
    if process_name:
        multiprocessing.current_process().name = process_name
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(stream)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    # All processes append to one file (O_APPEND keeps lines whole); rotate it with logrotate,
    # which the watched handler follows.
    file_handler = logging.handlers.WatchedFileHandler(settings.log_dir / "dicom-node.log")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    # pynetdicom logs every PDU at INFO; its warnings and errors are what matter here.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING if settings.log_level != "DEBUG" else logging.DEBUG)
