"""The console of up/serve/worker (dicom_node.logs): the node's events at INFO in one short line
each, other libraries' INFO (highdicom, Celery, kombu, pynetdicom) only with DEBUG (``-v``),
errors without a traceback unless DEBUG, and one JSON object per line with ``log_format: json``.

Not covered: which events the node logs while it runs (tests/e2e/test_readme.py reads them from a
real ``up``).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path
from typing import Iterator

import pytest

from dicom_node.logs import LOG_FILE, configure_logging, rotate
from dicom_node.settings import load_settings

THIRD_PARTY = ("highdicom.sr", "celery.worker.consumer", "kombu.connection", "pynetdicom.assoc", "uvicorn.error")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {
        name: logging.getLogger(name).level for name in ("dicom_node", "worker", "model", "pynetdicom", "py.warnings")
    }
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)
    logging.captureWarnings(False)


def _emit() -> None:
    logging.getLogger("dicom_node.jobs.completion").info("series complete: 96 image(s) from STORESCU, job 1 queued")
    logging.getLogger("dicom_node.pipeline.analyse").debug("job 1 runs on worker-1")
    for name in THIRD_PARTY:
        logging.getLogger(name).info("noise from %s", name)
    logging.getLogger("celery.worker").warning("a warning from Celery")
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        logging.getLogger("dicom_node.pipeline.export").exception("job 1 results not sent")


def test_console_at_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(load_settings(data_dir=tmp_path), process_name="worker")
    _emit()
    lines = capsys.readouterr().err.splitlines()
    assert [line[9:] for line in lines] == [
        "worker    series complete: 96 image(s) from STORESCU, job 1 queued",
        "worker    WARNING: a warning from Celery",
        "worker    ERROR: job 1 results not sent (RuntimeError: disk on fire; run with -v for the traceback)",
    ]
    # The file keeps every line the console shows, with date, process id and logger.
    text = (tmp_path / "logs" / "dicom-node.log").read_text()
    assert "INFO worker[" in text and "dicom_node.jobs.completion: series complete" in text


def test_verbose_shows_the_libraries_and_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(load_settings(data_dir=tmp_path, log_level="DEBUG"), process_name="up")
    _emit()
    err = capsys.readouterr().err
    assert "job 1 runs on worker-1" in err
    assert all(f"noise from {name}" in err for name in THIRD_PARTY)
    assert "Traceback" in err and "RuntimeError: disk on fire" in err


def test_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(load_settings(data_dir=tmp_path, log_format="json"), process_name="serve")
    _emit()
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    first = records[0]
    assert set(first) == {"time", "level", "process", "pid", "logger", "message"}
    assert (first["process"], first["logger"]) == ("serve", "dicom_node.jobs.completion")
    assert first["time"].endswith("+00:00")
    assert "Traceback" in records[2]["exception"]
    file_records = [json.loads(line) for line in (tmp_path / "logs" / "dicom-node.log").read_text().splitlines()]
    assert [r["message"] for r in file_records] == [r["message"] for r in records]


def test_the_log_file_is_rotated_and_every_writer_follows(tmp_path: Path) -> None:
    """Two writers (two processes of the node, as far as the file is concerned) keep writing across
    rotations: nothing is lost, the newest lines in the new file, at most ``keep`` old files."""
    writers = [logging.handlers.WatchedFileHandler(tmp_path / LOG_FILE) for _ in range(2)]
    for w in writers:
        w.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("dicom_node.test_rotation")
    logger.propagate = False
    for w in writers:
        logger.addHandler(w)
    try:
        written = 0
        for _round in range(6):
            for _ in range(50):
                logger.warning("line %d %s", written, "x" * 100)  # both writers write it
                written += 1
            assert rotate(tmp_path, max_bytes=10_000, keep=3)
        assert not rotate(tmp_path, max_bytes=10_000, keep=3)  # nothing written since: under the limit
        logger.warning("after the last rotation")
    finally:
        for w in writers:
            logger.removeHandler(w)
            w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [LOG_FILE, f"{LOG_FILE}.1", f"{LOG_FILE}.2", f"{LOG_FILE}.3"]
    assert (tmp_path / LOG_FILE).read_text().splitlines() == ["after the last rotation"] * 2
    newest_old = (tmp_path / f"{LOG_FILE}.1").read_text().splitlines()
    assert newest_old[-1].startswith(f"line {written - 1} ") and len(newest_old) == 100
