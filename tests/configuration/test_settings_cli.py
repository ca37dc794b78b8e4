"""Settings (environment over YAML over defaults) and the configuration command line.

Covers: the fixed variable names, YAML and environment precedence, refusals that name the field,
worker.parametric_map_max_slices (its default, null for no limit, true refused),
`dicom-node ae ...` adding and listing with the same validators, and `series list --json`.
Runs the CLI in-process through main(argv); tests/integration runs it as a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.db import Database, upgrade
from dicom_node.jobs.filters import SeriesFacts, SeriesFilter, evaluate
from dicom_node.listener.servers import ListenerSet
from dicom_node.settings import SettingsError, load_settings
from tests.harness.peers import free_port, port_open


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(__import__("os").environ):
        if key.startswith("DICOM_NODE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_defaults_live_under_the_data_dir(env: Path) -> None:
    s = load_settings()
    assert s.data_dir == env / "data"
    assert s.effective_database_url == f"sqlite:///{env / 'data' / 'dicom-node.sqlite3'}"
    assert s.effective_broker_url.startswith("sqla+sqlite:///")
    assert s.admin_port == 8080


def test_yaml_then_environment(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = env / "node.yaml"
    cfg.write_text("admin_port: 9000\nbroker_url: redis://127.0.0.1:6379/0\nlistener:\n  processes: 3\n")
    monkeypatch.setenv("DICOM_NODE_ADMIN_PORT", "9001")
    s = load_settings(cfg)
    assert (s.admin_port, s.listener.processes, s.broker_url) == (9001, 3, "redis://127.0.0.1:6379/0")
    # The file was for that call only: it leaves nothing behind in the process.
    assert "DICOM_NODE_CONFIG" not in __import__("os").environ
    assert load_settings().broker_url is None


def test_the_shipped_example_config_is_valid(env: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "dicom-node.yaml"
    s = load_settings(example)
    assert s.listener.min_free_disk_mb >= 0


def test_a_remote_worker_needs_the_token(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_REMOTE__NODE_URL", "http://node:8080/")
    with pytest.raises(SettingsError, match="setting remote: node_url needs token"):
        load_settings()
    monkeypatch.setenv("DICOM_NODE_REMOTE__TOKEN", "x" * 16)
    assert load_settings().remote.node_url == "http://node:8080"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("DICOM_NODE_ADMIN_PORT", "70000", "setting admin_port: 70000 is out of range"),
        (
            "DICOM_NODE_EXPORT__CALLING_AE_TITLE",
            "A\\B",
            "setting export.calling_ae_title: must not contain a backslash",
        ),
        ("DICOM_NODE_DATABASE_URL", "nonsense", "setting database_url:"),
        ("DICOM_NODE_WORKER__DEVICE", "tpu", "setting worker.device:"),
        ("DICOM_NODE_REMOTE__NODE_URL", "node:8080", "setting remote.node_url: 'node:8080' is not an http"),
        ("DICOM_NODE_REMOTE__TOKEN", "short", "setting remote.token: must be at least 16 characters"),
        (
            "DICOM_NODE_WORKER__PARAMETRIC_MAP_MAX_SLICES",
            "0",
            "setting worker.parametric_map_max_slices: Input should be greater than or equal to 1",
        ),
        ("DICOM_NODE_WORKER__PARAMETRIC_MAP_MAX_SLICES", "many", "setting worker.parametric_map_max_slices: "),
    ],
)
def test_bad_values_are_refused_naming_the_field(
    env: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=message.replace("\\", "\\\\")):
        load_settings()


def test_the_parametric_map_slice_limit(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().worker.parametric_map_max_slices == 600
    cfg = env / "node.yaml"
    cfg.write_text("worker:\n  parametric_map_max_slices: null\n")
    assert load_settings(cfg).worker.parametric_map_max_slices is None  # no limit
    cfg.write_text("worker:\n  parametric_map_max_slices: true\n")  # would read as 1: no map for any series
    with pytest.raises(SettingsError, match="setting worker.parametric_map_max_slices: True is not a number of slices"):
        load_settings(cfg)
    monkeypatch.setenv("DICOM_NODE_WORKER__PARAMETRIC_MAP_MAX_SLICES", "null")
    assert load_settings().worker.parametric_map_max_slices is None
    monkeypatch.setenv("DICOM_NODE_WORKER__PARAMETRIC_MAP_MAX_SLICES", "1000")
    assert load_settings().worker.parametric_map_max_slices == 1000


def test_null_in_the_environment_is_none_for_every_optional_setting(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in the YAML file: retention's "keep until the disk needs the room", a default thread count."""
    monkeypatch.setenv("DICOM_NODE_RETENTION__IMAGES_DAYS", "null")
    monkeypatch.setenv("DICOM_NODE_WORKER__TORCH_THREADS", "null")
    settings = load_settings()
    assert settings.retention.images_days is None and settings.worker.torch_threads is None


def test_bad_settings_exit_2_from_the_cli(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_ADMIN_PORT", "0")
    assert main(["ae", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dicom-node: invalid settings: setting admin_port") and err.count("\n") == 1, err


def test_a_config_file_that_is_not_yaml_is_one_line_and_exit_2(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = env / "node.yaml"
    cfg.write_text("listener:\n  processes: [1\n")
    monkeypatch.setenv("DICOM_NODE_CONFIG", str(cfg))
    assert main(["ae", "list"]) == 2
    err = capsys.readouterr().err
    expected = "not valid YAML (expected ',' or ']', but got '<stream end>')"
    assert err == f"dicom-node: invalid settings: {cfg}, line 3, column 1: {expected}\n"


def test_ae_commands(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ae", "add-destination", "PACS", "--host", "127.0.0.1", "--port", "4242", "--outputs", "sr,sc"]) == 0
    assert (
        main(["ae", "add-local", "COVIDNODE", "--port", "11112", "--quiet-seconds", "2", "--send-results-to", "PACS"])
        == 0
    )
    assert main(["ae", "add-source", "CT1", "--host", "10.0.0.5", "--port", "104"]) == 0
    capsys.readouterr()
    assert main(["ae", "add-local", "X" * 17, "--port", "11113"]) == 2
    assert "title: is 17 characters long" in capsys.readouterr().err
    assert main(["ae", "add-local", "OTHER", "--port", "11112"]) == 2
    assert "port: port 11112 is used" in capsys.readouterr().err
    assert main(["ae", "add-local", "OTHER", "--port", "11113", "--send-results-to", "NOPE"]) == 2
    assert "send_results_to: no destination titled 'NOPE'" in capsys.readouterr().err
    assert main(["ae", "add-source", "BAD", "--host", "not a host"]) == 2
    assert "host:" in capsys.readouterr().err
    assert main(["ae", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [a["title"] for a in data["local"]] == ["COVIDNODE"]
    assert data["local"][0]["send_results_to"] == ["PACS"]
    assert data["local"][0]["quiet_seconds"] == 2.0
    assert data["sources"][0] == {
        "id": 1,
        "title": "CT1",
        "host": "10.0.0.5",
        "port": 104,
        "enabled": True,
        "description": "",
    }
    assert data["destinations"][0]["outputs"] == ["sr", "sc"]
    assert main(["ae", "update-local", "COVIDNODE", "--quiet-seconds", "9", "--disable"]) == 0
    capsys.readouterr()
    main(["ae", "list", "--json"])
    local = json.loads(capsys.readouterr().out)["local"][0]
    assert (local["quiet_seconds"], local["enabled"]) == (9.0, False)
    assert main(["series", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_filters() -> None:
    facts = SeriesFacts(
        modality="CT",
        body_part="CHEST",
        series_description="Thorax 1.0 B70f",
        slices=120,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    )
    assert evaluate(SeriesFilter(), facts) == (True, "")
    assert evaluate(SeriesFilter(body_parts=["chest"]), facts)[0]
    ok, why = evaluate(SeriesFilter(series_description_pattern="lung|thorax.*b70"), facts)
    assert ok
    ok, why = evaluate(SeriesFilter(min_slices=200), facts)
    assert not ok and "120 image(s)" in why
    ok, why = evaluate(SeriesFilter(), SeriesFacts("CT", "", "Topogram", 1, ("ORIGINAL", "PRIMARY", "LOCALIZER")))
    assert not ok and "LOCALIZER" in why
    with pytest.raises(ValueError):
        SeriesFilter(series_description_pattern="(unclosed")


def test_listeners_start_and_stop_with_the_ae_table(env: Path) -> None:
    """The reconcile step of a listener process: a new AE listens, a disabled one stops cleanly."""
    settings = load_settings()
    upgrade(settings.effective_database_url)
    db = Database(settings.effective_database_url)
    port = free_port()
    assert main(["ae", "add-local", "RECONCILE", "--port", str(port)]) == 0
    listeners = ListenerSet(settings, db)
    listeners.reconcile()
    assert listeners.ports == [port] and port_open(port)
    assert main(["ae", "update-local", "RECONCILE", "--disable"]) == 0
    listeners.reconcile()  # raised ValueError before the AE tracked its servers
    assert listeners.ports == [] and not port_open(port)
    listeners.close()
    db.dispose()
