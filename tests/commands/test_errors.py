"""Every failure a person can fix ends the command with one line that says what to do, exit status
2, and no traceback unless ``-v``: database URLs in their common wrong forms, a database, broker
or PACS that does not answer, a port in use, missing weights, a missing or not-CT input folder.

The commands run as subprocesses (the real exit status and everything printed). The PostgreSQL
that answers is the real one (``services``); the ones that do not answer are ports nothing listens
on, which needs no server.

Not covered: the same errors inside the admin pages (tests/admin).
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.harness.peers import DICOM_NODE, create_postgres_database, drop_postgres_database, node_env

# dicom-node as a subprocess, each case: the services tier (tests/conftest.py).
pytestmark = pytest.mark.services


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return node_env(tmp_path / "data", admin_port=_free_port())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(env: dict[str, str], *args: str, **more_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DICOM_NODE, *args], env={**env, **more_env}, capture_output=True, text=True, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The command failed with exit status 2 and one line on stderr containing ``expected``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("dicom-node: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://user@127.0.0.1/db", "the scheme is postgresql://, not postgres://"),
        ("mysql://user@127.0.0.1/db", "mysql is not supported"),
        ("postgresql+asyncpg://user@127.0.0.1/db", "its driver is not installed"),
        ("postgresql://user:secret@127.0.0.1:1/db", "cannot open the database postgresql://user:***@127.0.0.1:1/db"),
        ("postgresql+psycopg2://user@127.0.0.1:1/db", "is PostgreSQL running there"),
    ],
)
def test_database_urls_that_can_not_work(env: dict[str, str], url: str, expected: str) -> None:
    line = one_line_error(run(env, "ae", "list", DICOM_NODE_DATABASE_URL=url), expected)
    assert "secret" not in line


def test_a_sqlite_file_in_a_folder_that_does_not_exist_is_refused_not_created(
    env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    one_line_error(
        run(env, "db", "upgrade", DICOM_NODE_DATABASE_URL=f"sqlite:///{missing}/x.db"),
        f"the folder {missing} does not exist",
    )
    assert not (tmp_path / "no").exists()


def test_the_traceback_only_with_verbose(env: dict[str, str]) -> None:
    proc = run(env, "-v", "ae", "list", DICOM_NODE_DATABASE_URL="postgres://user@127.0.0.1/db")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DatabaseURLError" in proc.stderr


@pytest.fixture
def postgres_database() -> Iterator[str]:
    url, name = create_postgres_database()
    yield url
    drop_postgres_database(name)


def test_plain_postgresql_urls_work(env: dict[str, str], postgres_database: str) -> None:
    """``postgresql://`` (psycopg, SQLAlchemy's default driver) and ``postgresql+psycopg2://``
    both reach the real server: both drivers ship with the node."""
    plain = postgres_database.replace("postgresql+psycopg2://", "postgresql://")
    for url in (plain, postgres_database):
        proc = run(env, "db", "upgrade", DICOM_NODE_DATABASE_URL=url)
        assert proc.returncode == 0, proc.stderr
        assert "is up to date" in proc.stdout


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_an_unreachable_broker(env: dict[str, str], command: str) -> None:
    line = one_line_error(
        run(env, command, DICOM_NODE_BROKER_URL="redis://:secret@127.0.0.1:1/0"),
        "cannot reach the broker redis://:***@127.0.0.1:1/0",
        "DICOM_NODE_BROKER_URL",
    )
    assert "secret" not in line


def test_an_unreachable_pacs(env: dict[str, str]) -> None:
    port = str(_free_port())
    assert run(env, "ae", "add-destination", "PACS", "--host", "127.0.0.1", "--port", port).returncode == 0
    one_line_error(
        run(env, "ae", "echo", "PACS"), f"PACS at 127.0.0.1:{port} did not answer C-ECHO", "calling AE COVIDCTNODE"
    )
    one_line_error(run(env, "ae", "echo", "NOPE"), "no destination titled 'NOPE'")


def test_ports_in_use(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Before up makes its AE: the fix is another --port.
        one_line_error(
            run(env, "up", "--port", str(port)), f"port {port} (local AE COVIDNODE) is in use", "dicom-node up --port N"
        )
        # A configured AE: the fix is to move it.
        assert run(env, "ae", "add-local", "CTAI", "--port", str(port)).returncode == 0
        one_line_error(run(env, "serve"), f"port {port} (local AE CTAI) is in use", "ae update-local CTAI --port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["DICOM_NODE_ADMIN_PORT"])))
        taken.listen()
        one_line_error(
            run(env, "serve"), f"port {env['DICOM_NODE_ADMIN_PORT']} (admin app) is in use", "DICOM_NODE_ADMIN_PORT"
        )


def test_missing_weights(env: dict[str, str], tmp_path: Path) -> None:
    one_line_error(
        run(env, "worker", DICOM_NODE_WORKER__WEIGHTS_DIR=str(tmp_path / "nope")),
        "setting worker.weights_dir",
        "does not exist",
    )
    series = _secondary_captures(tmp_path / "sc")
    one_line_error(
        run(env, "model", "predict", str(series), "--weights", str(tmp_path / "nope")),
        "model weights:",
        "metadata.json not found",
    )


def test_input_folders(env: dict[str, str], tmp_path: Path) -> None:
    one_line_error(run(env, "model", "predict", str(tmp_path / "nope")), "does not exist")
    one_line_error(
        run(env, "model", "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "w")), "is not a folder"
    )


def test_a_folder_of_secondary_captures_is_not_a_ct(env: dict[str, str], tmp_path: Path) -> None:
    """The result JSON still comes (stdout), the reason says once why, exit status 1."""
    proc = run(env, "model", "predict", str(_secondary_captures(tmp_path / "sc")))
    assert proc.returncode == 1, proc.stderr
    assert '"decision": "no_decision"' in proc.stdout
    reason = proc.stderr.strip()
    assert "is not a CT image (modality OT, Secondary Capture Image Storage)" in reason
    assert reason.count("no decision") == 1 and "no_decision" not in reason


def _secondary_captures(folder: Path) -> Path:
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for i in range(3):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = "OT"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(64)
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    return folder
