"""The defaults of the settings are the defaults everywhere a local AE or a destination is made:
the command line, the admin app's form and API, and ``dicom-node up``'s first local AE.

Covers: a YAML file's ``completion.default_quiet_seconds`` and ``default_max_wait_seconds``
reaching a local AE added without them (command line, ``ensure_local_ae``), the admin form's new
item, and one validator for the maximum wait (settings, schemas, ORM); ``export.default_outputs``
reaching a destination added without outputs (command line, admin form) and an empty list of
outputs refused with the field and the reason everywhere (settings, schemas, ORM, command line).
Not covered: completion itself (tests/jobs/test_completion.py), exports (tests/jobs/test_states.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dicom_node.admin.config_kinds import DESTINATIONS, LOCAL_AES
from dicom_node.admin.pages.config import _defaults
from dicom_node.cli import main
from dicom_node.configuration import DestinationIn, LocalAEIn, ensure_local_ae, parse
from dicom_node.db import Database, upgrade
from dicom_node.db.models import Destination, LocalAE
from dicom_node.errors import Refused
from dicom_node.settings import CompletionSettings, ExportSettings, SettingsError, load_settings


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path / "data"))
    path = tmp_path / "node.yaml"
    path.write_text(
        "completion:\n  default_quiet_seconds: 7.5\n  default_max_wait_seconds: 600\n"
        "export:\n  default_outputs: [sr, kos]\n"
    )
    return path


def test_the_command_line_takes_the_settings_defaults(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "ae", "add-local", "NODE", "--port", "11112"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert (made["quiet_seconds"], made["max_wait_seconds"]) == (7.5, 600.0)
    assert main(["--config", str(config), "ae", "add-local", "OTHER", "--port", "11113", "--quiet-seconds", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["quiet_seconds"] == 2.0


def test_up_and_the_admin_form_take_the_settings_defaults(config: Path) -> None:
    settings = load_settings(config)
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    try:
        assert ensure_local_ae(db, "COVIDNODE", 11112, settings.completion) is not None
        assert ensure_local_ae(db, "COVIDNODE", 11112, settings.completion) is None  # one exists
        with db.session() as s:
            ae = s.query(LocalAE).one()
            assert (ae.quiet_seconds, ae.max_wait_seconds) == (7.5, 600.0)
    finally:
        db.dispose()
    form = _defaults(LOCAL_AES, settings)
    assert (form["quiet_seconds"], form["max_wait_seconds"]) == (7.5, 600.0)


def test_one_validator_for_the_maximum_wait(tmp_path: Path) -> None:
    with pytest.raises(Refused, match="max_wait_seconds: 0.5 is out of range 1-604800 seconds"):
        parse(LocalAEIn, {"title": "NODE", "port": 104, "max_wait_seconds": 0.5})
    with pytest.raises(ValidationError, match="0.5 is out of range 1-604800 seconds"):
        CompletionSettings(default_max_wait_seconds=0.5)
    with pytest.raises(SettingsError, match="completion.default_max_wait_seconds"):
        load_settings(data_dir=tmp_path, completion={"default_max_wait_seconds": 10**9})
    with pytest.raises(ValueError, match="max_wait_seconds: 0.5 is out of range"):
        LocalAE(title="NODE", port=104, quiet_seconds=5.0, max_wait_seconds=0.5)


def test_a_destination_without_outputs_gets_the_settings_default(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--config", str(config), "ae", "add-destination"]
    assert main([*args, "PACS", "--host", "127.0.0.1", "--port", "4242"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == ["sr", "kos"]
    assert main([*args, "VNA", "--host", "127.0.0.1", "--port", "4243", "--outputs", "seg"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == ["seg"]
    assert _defaults(DESTINATIONS, load_settings(config))["outputs"] == ["sr", "kos"]


def test_an_empty_list_of_outputs_is_refused_naming_the_field(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    why = "is empty: name at least one of sr, sc, seg, kos, pm"
    args = ["--config", str(config), "ae", "add-destination", "PACS", "--host", "127.0.0.1", "--port", "4242"]
    assert main([*args, "--outputs", ""]) == 2
    assert capsys.readouterr().err == f"dicom-node: refused: outputs: {why}\n"
    with pytest.raises(Refused, match=f"^outputs: {why}$"):
        parse(DestinationIn, {"title": "PACS", "host": "127.0.0.1", "port": 4242, "outputs": []})
    with pytest.raises(Refused, match=f"^outputs: {why}$"):
        Destination(title="PACS", host="127.0.0.1", port=4242, outputs=[])
    with pytest.raises(ValidationError, match=why):
        ExportSettings(default_outputs=[])
    with pytest.raises(SettingsError, match=f"setting export.default_outputs: {why}"):
        load_settings(data_dir=tmp_path, export={"default_outputs": []})
