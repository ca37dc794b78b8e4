"""The listener's processes and ports around crashes: listener processes die with their
parent (no orphans serving after a kill -9 of serve); a port held by another program, or by
another node, is an AE error shown by `ae list --json` and /health (not ok), logged once, never a
silent share; the port freed, the AE listens again."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from model.phantoms.writer import write_phantom_series
from tests.harness.hostile import exited, listener_processes
from tests.harness.peers import NodeProcess, cli, cli_json, free_port, node_env, port_open, storescu, wait_until

pytestmark = pytest.mark.integration


def make_node(tmp: Path, port: int, title: str = "COVIDNODE") -> tuple[dict[str, str], NodeProcess]:
    data_dir = tmp / f"data-{title}"
    data_dir.mkdir(parents=True)
    env = node_env(
        data_dir,
        admin_port=free_port(),
        listener__processes=2,
        listener__reload_seconds=0.5,
        completion__poll_seconds=0.2,
    )
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-local", title, "--port", str(port), "--quiet-seconds", "1")
    cli(env, "ae", "add-source", "STORESCU")
    return env, NodeProcess(env, ["serve"])


def health(env: dict[str, str]) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{env['DICOM_NODE_ADMIN_PORT']}/health", timeout=10) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def listen_error(env: dict[str, str]) -> str:
    return str(cli_json(env, "ae", "list", "--json")["local"][0]["listen_error"])


def test_listener_processes_die_with_their_parent(tmp_path: Path) -> None:
    port = free_port()
    env, node = make_node(tmp_path, port)
    node.start()
    try:
        node.wait_for_port(port)
        assert node.proc is not None
        pid = node.proc.pid
        children = wait_until(
            lambda: listener_processes(pid) if len(listener_processes(pid)) == 2 else None, 60, "2 listeners"
        )
        os.kill(node.proc.pid, signal.SIGKILL)  # the parent only, as an OOM killer would
        node.proc.wait(10)
        try:
            wait_until(lambda: exited(children), 30, "the listener processes to exit after their parent died")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {_states(children)}\n{node.output()[-4000:]}") from None
        wait_until(lambda: not port_open(port), 30, "the port to close")
    finally:
        node.stop(signal.SIGKILL)


def _states(processes: list[psutil.Process]) -> str:
    """Each process's state and where its threads wait in the kernel: what a hang shows."""
    out = []
    for proc in processes:
        try:
            waits = [Path(f"/proc/{proc.pid}/task/{t.id}/wchan").read_text() for t in proc.threads()]
            out.append(f"{proc.pid} {proc.status()} ppid {proc.ppid()} threads waiting in {waits}")
        except (psutil.Error, OSError) as exc:
            out.append(f"{proc.pid}: {exc}")
    return "; ".join(out)


def test_a_port_held_by_another_program_is_an_ae_error_until_it_is_free(tmp_path: Path) -> None:
    # At start a taken port is a start error (dicom_node.commands.run.check_ports); here the AE
    # moves to a taken port while the node runs.
    first_port = free_port()
    env, node = make_node(tmp_path, first_port)
    port = free_port()
    holder = socket.socket()
    holder.bind(("0.0.0.0", port))
    holder.listen()
    node.start()
    try:
        node.wait_for_port(first_port)
        cli(env, "ae", "update-local", "COVIDNODE", "--port", str(port))
        wait_until(lambda: listen_error(env).startswith("port in use"), 90, "the AE's listen error")
        assert "held by another program" in listen_error(env)
        wait_until(lambda: health(env).get("status") == "fail", 60, "/health to fail")
        aes = health(env)["checks"]["listeners"]["aes"]
        assert aes[0]["ok"] is False and aes[0]["error"].startswith("error: port in use"), aes
        # Logged once per listener process, not at every retry (twice a second before).
        assert node.output().count("cannot listen as COVIDNODE") <= 2, node.output()
        holder.close()
        wait_until(lambda: listen_error(env) == "", 60, "the AE to listen once the port is free")
        series = write_phantom_series("normal", tmp_path / "series", seed=4, slices=4, rows=32, columns=32)
        assert storescu(series, port).returncode == 0
    finally:
        holder.close()
        node.stop()


def test_a_second_node_on_the_same_port_is_refused_not_shared(tmp_path: Path) -> None:
    port = free_port()
    env_a, first = make_node(tmp_path, port, "COVIDNODE")
    other_port = free_port()
    env_b, second = make_node(tmp_path, other_port, "OTHERNODE")
    first.start()
    second.start()
    try:
        first.wait_for_port(port)
        second.wait_for_port(other_port)
        # The second node's AE moves to the first one's port while both run (SO_REUSEPORT would
        # let it share the port silently).
        cli(env_b, "ae", "update-local", "OTHERNODE", "--port", str(port))
        wait_until(lambda: "another dicom-node" in listen_error(env_b), 90, "the second node's listen error")
        assert env_a["DICOM_NODE_DATA_DIR"] in listen_error(env_b)
        assert listen_error(env_a) == ""
        wait_until(lambda: health(env_b).get("status") == "fail", 60, "the second node's /health to fail")
        # Every association goes to the first node (the second one would refuse COVIDNODE).
        series = write_phantom_series("normal", tmp_path / "series", seed=5, slices=4, rows=32, columns=32)
        for _ in range(6):
            sent = storescu(series, port)
            assert sent.returncode == 0, sent.stderr
    finally:
        second.stop()
        first.stop()
