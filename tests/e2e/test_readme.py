"""The README's first four sections ("Install", "Run", "Send a study and see the result",
"Test") as a newcomer follows them, so that they can not drift from the product:

- the install command runs as written in a copy of this checkout (a fresh ``.venv``);
- "Run" and "Send a study" run as written in that copy (tests/e2e/readme_demo.py), inside a
  network namespace of their own (their fixed ports collide with nothing) and with a HOME of
  their own: ``up`` and Orthanc start, the node is configured, a covid phantom goes through
  storescu (to PACS and to the node), ``jobs list`` shows the job done and sent, Orthanc holds the
  SR, SC, SEG and KOS, and Ctrl+C stops ``up`` with status 0; ``up``'s console shows the
  user-level events and none of Celery's banner, its superuser warning or highdicom's INFO lines;
- "Test" is the command CI runs (.ci/run); CI running it is its test;
- every ``dicom-node`` command the README names, in a block or inline, parses.

The README's ``sudo`` is dropped when the test already runs as root (CI does; not every machine
has sudo). The covid phantom must come back as COVID-19 (``job 1 done: covid``), as the README
says; the model's accuracy in general is measured by ``model evaluate`` (model/README.md).

The "DICOMweb input (STOW-RS)" section runs as written against ``dicom-node serve`` (its port
and the instance files swapped for the test's): a sender user and token made, the token allowed,
two phantom CT instances posted by curl, both stored, the series complete with the job queued.

The "Running it for months" section's commands run as written on a fresh node (a HOME of their
own, so ``~/.local/share/dicom-node`` is its data dir; the backup folder and the PostgreSQL URL
swapped for the test's): ``storage status``, ``storage purge --dry-run`` (nothing to purge), the
AE's own days, the SQLite backup (a database at the current schema), its restore (``db upgrade``,
``db reindex``), ``pg_dump`` of a private PostgreSQL database of the node's schema and ``db
upgrade``; the ``git pull`` of an upgrade is only checked to be there.

Not covered: the viewer section (tests/viewer's browser tests).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicom_node.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTIONS = ("Install", "Run", "Send a study and see the result", "Test")
RUN_TAIL = " && .venv/bin/dicom-node up"


def section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def commands(title: str) -> list[str]:
    """The shell commands of a section's ```sh blocks, one per line, comments dropped."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", section(title), re.S):
        for line in block.splitlines():
            command = re.split(r"\s+#\s", line)[0].strip()
            if command:
                out.append(command)
    return out


def as_root(command: str) -> str:
    if command.startswith("sudo ") and os.geteuid() == 0:
        return command.removeprefix("sudo ")
    return command


def test_the_sections_are_there_in_order() -> None:
    text = README.read_text()
    heads = [m for m in re.findall(r"^## (.+)$", text, re.M)]
    assert heads[: len(SECTIONS)] == list(SECTIONS), heads[:6]
    # One command installs and runs the node; one installs and runs the tests.
    assert commands("Install") == [commands("Install")[0]] and commands("Install")[0].endswith(RUN_TAIL)
    assert commands("Run") == [RUN_TAIL.removeprefix(" && ")]
    assert commands("Test") == ["sudo tests/run"]


def test_the_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec tests/run$", ci, re.M), "CI runs the README's test command, as written"
    assert os.access(ROOT / "tests" / "run", os.X_OK)


# Sections whose commands need a PACS or a site of their own: they are parsed, not run.
PARSED_ONLY = ("Backfill",)
# Run on a fresh node by test_the_months_section_runs_as_written.
MONTHS_SECTION = "Running it for months"


def test_every_dicom_node_command_of_these_sections_parses() -> None:
    """Blocks and inline code alike (``dicom-node -v up``, ``admin create-user NAME ...``)."""
    titles = (*SECTIONS, *PARSED_ONLY, MONTHS_SECTION)
    named = [c for title in titles for c in commands(title)]
    named += [m for title in titles for m in re.findall(r"`((?:\.venv/bin/)?dicom-node [^`]+)`", section(title))]
    parser = build_parser()
    checked = 0
    for line in named:
        for part in line.split(" && "):
            words = shlex.split(part)
            if words and words[0].endswith("dicom-node"):
                try:
                    parser.parse_args(words[1:])
                except SystemExit as exc:
                    if exc.code != 0:
                        pytest.fail(f"README: `{part}` does not parse")
                checked += 1
    assert checked >= 10


@pytest.mark.e2e
@pytest.mark.slow
def test_install_run_send_and_see(tmp_path: Path) -> None:
    copy = tmp_path / "clone"
    _copy_checkout(copy)
    install = commands("Install")[0].removesuffix(RUN_TAIL)
    t = time.monotonic()
    proc = subprocess.run(["bash", "-c", install], cwd=copy, capture_output=True, text=True, timeout=1800)
    install_seconds = time.monotonic() - t
    assert proc.returncode == 0, f"{install}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    send = [as_root(c) for c in commands("Send a study and see the result")]
    # Package installs need the network: outside the namespace (a no-op where tests/run ran).
    installs = [c for c in send if c.startswith("apt-get ")]
    for command in installs:
        assert subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=900).returncode == 0, (
            command
        )
    steps = [{"section": "Run", "command": c} for c in commands("Run")] + [
        {"section": "Send", "command": c} for c in send if c not in installs
    ]
    home = tmp_path / "home"
    home.mkdir()
    spec = tmp_path / "steps.json"
    spec.write_text(json.dumps({"repo": str(copy), "home": str(home), "steps": steps}))
    report_path = tmp_path / "demo" / "report.json"
    report_path.parent.mkdir()
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to give the demo a network of its own"
    demo = subprocess.run(
        [unshare, "-n", sys.executable, "-m", "tests.e2e.readme_demo", str(spec), str(report_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    assert demo.returncode == 0 and report.get("ok"), (
        f"{report.get('error', '')}\n{demo.stdout[-3000:]}\n{demo.stderr[-3000:]}"
    )

    timings = {"install_seconds": round(install_seconds), **report["timings"]}
    print("README demo timings:", json.dumps(timings))
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "readme-demo.json").write_text(
        json.dumps({"timings": timings, "up_console": report["up_console"]}, indent=2)
    )

    pacs = report["pacs"]
    assert pacs.get("CT") == 96, pacs
    assert {"SR", "OT", "SEG", "KO"} <= set(pacs), f"the node's objects in PACS: {pacs}"
    assert report["exit_codes"]["up"] == 0, "Ctrl+C stops up cleanly"

    console = report["up_console"]
    for event in (
        "/.local/share/dicom-node; database sqlite:////",
        "/.local/share/dicom-node/dicom-node.sqlite3; broker sqlite:////",
        "listening as COVIDNODE on 0.0.0.0:11112",
        "association from STORESCU@127.0.0.1 to COVIDNODE accepted",
        "series complete: 96 image(s) from STORESCU, job 1 queued",
        "job 1 started",
        "job 1 done: covid",
        "job 1 results sent to PACS (127.0.0.1:4242)",
    ):
        assert event in console, f"up's console lacks {event!r}:\n{console}"
    for noise in ("celery@", "-------------- ", "superuser privileges", "copy attributes", "Traceback"):
        assert noise not in console, f"up's console shows {noise!r}:\n{console}"


STOW_SECTION = "DICOMweb input (STOW-RS)"


@pytest.mark.e2e
def test_the_stow_section_runs_as_written(tmp_path: Path) -> None:
    from model.phantoms.phantom import make_phantom  # noqa: PLC0415  this test only
    from model.phantoms.writer import write_phantom_series  # noqa: PLC0415  this test only
    from tests.admin.conftest import start_live_node  # noqa: PLC0415  selenium & co: this test only
    from tests.harness.peers import cli, free_port, wait_until  # noqa: PLC0415  this test only

    steps = commands(STOW_SECTION)
    assert any(s.startswith("curl ") for s in steps) and any("--stow-tokens" in s for s in steps)
    node = start_live_node(tmp_path / "node-data")
    try:
        cli(node.env, "ae", "add-local", "COVIDNODE", "--port", str(free_port()), "--quiet-seconds", "1")
        work = tmp_path / "work"
        write_phantom_series(make_phantom("covid", seed=5, slices=4, rows=48, columns=48), work / "series")
        files = sorted((work / "series").glob("*.dcm"))
        for n, path in enumerate(files[:2], 1):
            shutil.copy(path, work / f"ct-{n}.dcm")
        env = {**node.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        outputs = []
        for step in steps:
            step = step.replace("http://127.0.0.1:8080", node.url)
            proc = subprocess.run(["bash", "-c", step], cwd=work, env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, f"{step}\n{proc.stdout}\n{proc.stderr}"
            outputs.append(proc.stdout)
            if "create-token" in step:
                made = json.loads(proc.stdout)
                assert made["id"] == 2, "the README allows token 2: the node's first token is the test's admin's"
                env["TOKEN"] = made["token"]
        answer = json.loads(outputs[-1])
        assert "00081198" not in answer, answer  # no Failed SOP Sequence
        assert len(answer["00081199"]["Value"]) == 2  # Referenced SOP Sequence: both stored
        with node.api() as api:

            def queued() -> bool:
                rows = api.get("/api/series").json()
                return any(r["calling_ae"] == "STOW-RS" and r["instances"] == 2 and r["job_id"] for r in rows)

            wait_until(queued, 60, "the STOW-RS series to complete and queue its job")
    finally:
        node.process.stop()


@pytest.mark.e2e
def test_the_months_section_runs_as_written(tmp_path: Path) -> None:
    from tests.harness.peers import (  # noqa: PLC0415  this test only
        create_postgres_database,
        drop_postgres_database,
        free_port,
    )

    steps = commands(MONTHS_SECTION)
    home, backups = tmp_path / "home", tmp_path / "backups"
    data_dir = home / ".local" / "share" / "dicom-node"
    backups.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_") and k != "XDG_DATA_HOME"}
    env.update(HOME=str(home), DICOM_NODE_ADMIN_PORT=str(free_port()))
    node = str(ROOT / ".venv" / "bin" / "dicom-node")

    def sh(command: str, **more_env: str) -> str:
        proc = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env={**env, **more_env}, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    sh(f"{node} ae add-local COVIDNODE --port {free_port()}")
    database, name = create_postgres_database()
    plain = database.replace("postgresql+psycopg2://", "postgresql://")
    sh(f"{node} db upgrade", DICOM_NODE_DATABASE_URL=plain)
    out: dict[str, str] = {}
    upgrades = [s for s in steps if s.startswith("git pull")]
    assert upgrades == ["git pull && .venv/bin/pip install -e ."], upgrades
    try:
        for step in steps:
            if step in upgrades:
                continue  # a release to pull is not there in a test
            step = step.replace("/var/backups/", f"{backups}/")
            step = step.replace("postgresql://dicom@db.example.org/dicom_node", plain)
            out[step] = sh(step)
    finally:
        drop_postgres_database(name)
    ran = "\n".join(out)
    for expected in (
        "storage status",
        "storage purge --dry-run",
        "--keep-images-days",
        ".backup",
        "pg_dump",
        "db upgrade",
    ):
        assert expected in ran, f"the section runs no {expected!r}"
    said = "\n".join(out.values())
    assert "nothing to purge now (dry run)" in said and "is up to date" in said and "indexed 0 stored" in said, said
    ae = json.loads(sh(f"{node} ae list --json"))
    assert [a["keep_images_days"] for a in ae["local"] if a["title"] == "COVIDNODE"] == [7], ae
    for copy in ("dicom-node.sqlite3", "dicom-node-before-upgrade.sqlite3"):
        check = sh(f"sqlite3 {backups / copy} 'SELECT count(*) FROM local_aes'")
        assert check.strip() == "1", (copy, check)
    listed = subprocess.run(
        ["pg_restore", "--list", str(backups / "dicom-node.dump")], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE public jobs" in listed, listed[:2000]
    assert (data_dir / "dicom-node.sqlite3").is_file(), "the section's paths are the default data dir's"


def _copy_checkout(dest: Path) -> None:
    """The checkout's files as a clone has them (tracked and not ignored, as they are now)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
