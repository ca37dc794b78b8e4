"""Runs the README's "Run" and "Send a study and see the result" commands as a newcomer would,
inside a network namespace of its own (``unshare -n``), so that the README's fixed ports (11112,
8080, 4242, 8042) can not collide with anything else on the machine. tests/e2e/test_readme.py
starts it; it is not a test module itself.

    unshare -n python -m tests.e2e.readme_demo STEPS.json REPORT.json

STEPS.json: ``{"repo": folder of the installed copy, "home": HOME for every command, "steps":
[{"section": ..., "command": ...}, ...]}``, the commands as the README writes them. The servers
(``dicom-node up``, ``Orthanc``) start in the background, as in a terminal of their own; every
other command must exit 0, except ``jobs list``, run again until it shows the job done and sent.
Then Orthanc's REST API must hold the node's objects (SR, SC, SEG, KOS) in the CT's study, and
Ctrl+C (SIGINT) must stop ``up`` with exit status 0. REPORT.json gets the timings and what ``up``
printed; the exit status is 0 when everything held.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ORTHANC_HTTP = "http://127.0.0.1:8042"
# The README's ports: the node's AE, its admin app, the PACS.
UP_PORTS = (11112, 8080)
PACS_PORT = 4242
TIMEOUT = 900.0


class Failed(Exception):
    pass


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def orthanc(path: str) -> Any:
    with urllib.request.urlopen(ORTHANC_HTTP + path, timeout=10) as resp:
        return json.loads(resp.read())


def modalities_in_pacs() -> dict[str, int]:
    counts: dict[str, int] = {}
    for series_id in orthanc("/series"):
        series = orthanc(f"/series/{series_id}")
        modality = series["MainDicomTags"].get("Modality", "?")
        counts[modality] = counts.get(modality, 0) + len(series["Instances"])
    return counts


class Demo:
    def __init__(self, spec: dict[str, Any], log_dir: Path) -> None:
        self.repo = Path(spec["repo"])
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": spec["home"], "LANG": "C.UTF-8"}
        self.log_dir = log_dir
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.timings: dict[str, float] = {}

    def shell(self, command: str, *, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, name: str, command: str, ports: tuple[int, ...]) -> None:
        log = self.log_dir / f"{name}.log"
        self.logs[name] = log
        with open(log, "wb") as out:
            # Its own process group, as a terminal's foreground job: Ctrl+C reaches the whole group.
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.repo,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers[name] = proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise Failed(f"{command!r} exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            return all(port_open(p) for p in ports)

        t = time.monotonic()
        wait(ready, 180, f"{command!r} to listen on {ports}")
        self.timings[f"{name}_ready_seconds"] = round(time.monotonic() - t, 1)

    def run(self, command: str) -> str:
        t = time.monotonic()
        proc = self.shell(command)
        if proc.returncode != 0:
            raise Failed(
                f"{command!r} exited {proc.returncode}:\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
            )
        seconds = round(time.monotonic() - t, 1)
        if " phantom " in command:
            self.timings["phantom_seconds"] = seconds
        if command.lstrip().startswith(("TCP_NODELAY=1 storescu", "storescu")):
            self.timings["send_seconds"] = seconds
            self.sent_at = time.monotonic()
        return proc.stdout

    def poll_jobs(self, command: str) -> str:
        """``jobs list`` until its job is done and sent to PACS (or failed: an error)."""

        def done() -> str | None:
            out = self.run(command)
            lines = out.splitlines()
            state = lines[0].split().index("STATUS") if lines and "STATUS" in lines[0].split() else 1
            rows = [line.split() for line in lines[1:] if line[:1].isdigit()]
            if any(r[state] == "failed" for r in rows):
                raise Failed(f"the job failed:\n{out}\n{self.logs_tail()}")
            return out if any(r[state] == "done" and "PACS done" in " ".join(r) for r in rows) else None

        out = wait(done, TIMEOUT, "jobs list to show the job done and sent to PACS", interval=2.0)
        self.timings["results_after_last_image_seconds"] = round(time.monotonic() - self.sent_at, 1)
        return str(out)

    def logs_tail(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{path.read_text(errors='replace')[-4000:]}" for name, path in self.logs.items()
        )

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for name, proc in reversed(list(self.servers.items())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C
                try:
                    proc.wait(90)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            codes[name] = proc.returncode
        return codes


def main(argv: list[str]) -> int:
    spec_path, report_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    demo = Demo(spec, report_path.parent)
    report: dict[str, Any] = {"ok": False}
    try:
        for step in spec["steps"]:
            command = step["command"]
            if command.endswith("dicom-node up"):
                demo.start("up", command, UP_PORTS)
            elif command.split("&&")[-1].strip() == "Orthanc":
                demo.start("orthanc", command, (PACS_PORT, 8042))
            elif command.endswith("dicom-node jobs list"):
                report["jobs_list"] = demo.poll_jobs(command)
            else:
                demo.run(command)
        report["pacs"] = modalities_in_pacs()
        report["ok"] = True
    except Failed as exc:
        report["error"] = f"{exc}\n{demo.logs_tail()}"
    finally:
        report["exit_codes"] = demo.stop()
        report["timings"] = demo.timings
        report["up_console"] = demo.logs["up"].read_text(errors="replace") if "up" in demo.logs else ""
        report_path.write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
