"""Changes made through the admin API reach the running node without a restart: a real
``dicom-node serve`` (listener process, completion, admin app) on loopback ports, DCMTK's echoscu
and storescu as the modality.

Covers: a new local AE listens within seconds; a calling AE is refused until it is added as a
source, then accepted, and refused again at its next association once the source is deleted (the
refusal is listed in /api/events); a series sent is listed with its state; disabling an AE closes
its port; /health sees the listener. Not covered: the pages (test_browser.py).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from model.phantoms.writer import write_phantom_series
from tests.admin.conftest import LiveNode
from tests.harness.peers import free_port, port_open, require_tool, storescu, wait_until

pytestmark = pytest.mark.integration

CALLING = "MODALITY1"
CALLED = "LIVENODE"


def echo(port: int, calling: str = CALLING) -> subprocess.CompletedProcess[str]:
    exe = require_tool("echoscu", "dcmtk")
    return subprocess.run(
        [exe, "-aet", calling, "-aec", CALLED, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60
    )


def refusals(api: Any) -> int:
    """Associations the node refused to CALLING because of the allow-list (its events)."""
    events = api.get("/api/events", params={"limit": 1000}).json()
    return sum(
        1
        for e in events
        if e["category"] == "association" and e["calling_ae"] == CALLING and "allow-list" in e["message"]
    )


def assert_refused(api: Any, port: int) -> None:
    before = refusals(api)
    answer = echo(port)
    # The node answers A-ASSOCIATE-RJ; DCMTK sometimes reports the closed connection instead
    # ("Peer aborted Association"): either way no association, and the node says why.
    assert answer.returncode != 0, answer
    assert "Association Rejected" in answer.stderr or "Peer aborted" in answer.stderr, answer.stderr
    wait_until(lambda: refusals(api) == before + 1, 10, "the refusal to be recorded")


def test_changes_reach_the_running_listener(live_node: LiveNode, tmp_path: Path) -> None:
    port = free_port()
    with live_node.api() as api:
        created = api.post("/api/local-aes", json={"title": CALLED, "port": port, "quiet_seconds": 1})
        assert created.status_code == 201, created.text
        ae_id = created.json()["id"]
        start = time.monotonic()
        wait_until(lambda: port_open(port), 15, f"the new AE to listen on {port}")
        listening_after = time.monotonic() - start
        assert listening_after < 10, listening_after

        assert_refused(api, port)

        source = api.post("/api/sources", json={"title": CALLING})
        assert source.status_code == 201
        accepted = echo(port)
        assert accepted.returncode == 0, accepted.stderr

        scanner = write_phantom_series(
            "normal", tmp_path / "scanner", seed=1, slices=4, rows=64, columns=64, write_masks=False
        )
        sent = storescu(scanner, port, calling=CALLING, called=CALLED)
        assert sent.returncode == 0, sent.stderr
        series = wait_until(lambda: api.get("/api/series").json(), 15, "the series to be listed")
        assert series[0]["instances"] == 4 and series[0]["local_ae"] == CALLED and series[0]["calling_ae"] == CALLING

        assert api.delete(f"/api/sources/{source.json()['id']}").status_code == 204
        assert_refused(api, port)

        health = api.get("/health").json()
        assert {"title": CALLED, "port": port, "ok": True} in health["checks"]["listeners"]["aes"], health

        assert api.patch(f"/api/local-aes/{ae_id}", json={"enabled": False}).status_code == 200
        wait_until(lambda: not port_open(port), 15, f"port {port} to close")
        actions = [e["action"] for e in api.get("/api/audit").json()]
    assert actions[:4] == ["local_ae.update", "source.delete", "source.create", "local_ae.create"]
