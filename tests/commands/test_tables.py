"""The lists of the command line for people: a table with headers per list, a line that says what
to do when it is empty, ``--json`` on every list, unknown filter values refused.

Through main() on a SQLite database with rows made directly. Not covered: the JSON's fields
(test_jobs_cli.py, tests/configuration/test_settings_cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.cli import build_parser, main
from dicom_node.db import Database, upgrade
from dicom_node.db.models import Destination, Job, LocalAE, Series
from dicom_node.jobs.states import JobStatus, SeriesStatus
from dicom_node.settings import load_settings
from tests.commands.test_help import commands

LISTS = [
    ("ae", "list"),
    ("series", "list"),
    ("jobs", "list"),
    ("triage", "list"),
    ("admin", "list-users"),
    ("admin", "list-tokens"),
]


@pytest.fixture
def empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path / "data"))
    url = load_settings().effective_database_url
    upgrade(url)
    return url


def test_every_list_command_has_json() -> None:
    lists = {path for path, _ in commands(build_parser()) if path[-1].startswith("list")}
    assert lists == set(LISTS)
    for path in LISTS:
        assert build_parser().parse_args([*path, "--json"]).json is True


@pytest.mark.parametrize("path", LISTS, ids=[" ".join(p) for p in LISTS])
def test_empty_lists_say_what_to_do(empty: str, path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(list(path)) == 0
    out = capsys.readouterr().out
    assert out.strip(), "an empty list says so"
    assert "dicom-node" in out or "send one" in out or "gets one" in out, out
    assert main([*path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # A list, or a dict of lists (ae list, triage list): all empty.
    assert data == [] or (isinstance(data, dict) and data and all(v == [] for v in data.values())), data


def test_series_and_jobs_tables_have_headers_and_columns(empty: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = Database(empty)
    with db.session() as s:
        ae = LocalAE(title="COVIDNODE", port=11112, quiet_seconds=5.0, max_wait_seconds=1800.0)
        ae.destinations = [Destination(title="PACS", host="127.0.0.1", port=4242, outputs=["sr", "seg"])]
        s.add(ae)
        s.flush()
        done = Series(series_uid="1.2.3.4", study_uid="1.2.3", local_ae_id=ae.id, status=SeriesStatus.COMPLETE.value,
                      instances=96, patient_id="PHANTOM-1", calling_ae="STORESCU",
                      series_description="Synthetic chest CT phantom - a COVID-19 pattern, long words")  # fmt: skip
        skipped = Series(
            series_uid="1.2.3.5",
            study_uid="1.2.3",
            local_ae_id=ae.id,
            status=SeriesStatus.NOT_ANALYSED.value,
            instances=1,
            reason="modality MR is not CT",
        )
        s.add_all([done, skipped])
        s.flush()
        s.add(
            Job(
                series_id=done.id,
                status=JobStatus.DONE.value,
                decision="covid",
                attempts=1,
                result={"probabilities": {"covid": 0.9, "cap": 0.05, "normal": 0.05}},
            )
        )
    db.dispose()

    assert main(["series", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "STATUS",
        "IMAGES",
        "RECEIVED",
        "AE",
        "PATIENT",
        "DESCRIPTION",
        "SERIES",
        "UID",
        "REASON",
    ]
    done_line = next(line for line in lines if "1.2.3.4" in line)
    # The description is clipped in its own column; it never runs into the reason.
    assert "Synthetic chest CT phantom - a…" in done_line and done_line.split()[0] == "done"
    assert next(line for line in lines if "1.2.3.5" in line).rstrip().endswith("modality MR is not CT")

    assert main(["jobs", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["JOB", "PRIORITY", "STATUS", "DECISION", "SECONDS"]
    assert lines[1].split()[:4] == ["1", "routine", "done", "covid"]
    assert lines[-1] == "Not for clinical use."


@pytest.mark.parametrize("path", [("series", "list"), ("jobs", "list")])
def test_unknown_filter_values_are_refused(
    empty: str, path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*path, "--status", "bogus"])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
