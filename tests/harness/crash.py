"""kill -9 of the node during a series, restart, the sender resumes: what the reliability
tests and benchmarks/reliability.py measure. A round: `serve` starts, storescu sends a series,
the whole node (serve and its listeners) is killed with SIGKILL at a random moment, serve starts
again, the instances storescu saw acknowledged must be stored and indexed, storescu sends the whole
series again (as a modality retries), and the series must complete once, whole: no job for a
partial series."""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Instance, Job, Series
from tests.harness.peers import NodeProcess, require_tool, storescu, wait_until

_SENDING = re.compile(r"Sending file: (.+)$")


@dataclass
class RoundResult:
    acknowledged: int  # instances storescu saw answered Success before the kill
    lost: int  # of those, not stored and indexed after the restart
    jobs: int  # jobs of the series in the end
    partial_jobs: int  # completions of the series before it was whole
    instances: int  # instances of the series in the end
    killed_after: float  # seconds after storescu started


def acknowledged_files(storescu_output: str) -> list[Path]:
    """The files storescu -v reports answered with Success."""
    out: list[Path] = []
    current: str | None = None
    for line in storescu_output.splitlines():
        found = _SENDING.search(line)
        if found:
            current = found.group(1).strip()
        elif "Received Store Response (Success)" in line and current is not None:
            out.append(Path(current))
            current = None
    return out


def crash_round(
    env: dict[str, str],
    port: int,
    series: Path,
    database_url: str,
    rng: random.Random,
    *,
    kill_within: tuple[float, float] = (0.2, 1.2),
) -> RoundResult:
    """One round (see the module docstring); leaves no node running."""
    files = sorted(series.glob("*.dcm"))
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    node = NodeProcess(env, ["serve"]).start()
    try:
        node.wait_for_port(port, timeout=120)
        exe = require_tool("storescu", "dcmtk")
        sender = subprocess.Popen(
            [exe, "-v", "-aet", "STORESCU", "-aec", "COVIDNODE", "127.0.0.1", str(port), *map(str, files)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, TCP_NODELAY="1"),
        )  # fmt: skip
        started = time.monotonic()
        time.sleep(rng.uniform(*kill_within))
        killed_after = time.monotonic() - started
        node.kill()  # SIGKILL to serve and its listeners (the process group)
        output, _ = sender.communicate(timeout=120)
    finally:
        node.stop()
    acked = acknowledged_files(output)
    acked_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in acked}

    node = NodeProcess(env, ["serve"]).start()
    try:
        node.wait_for_port(port, timeout=120)
        db = Database(database_url)
        try:
            with db.session() as s:
                rows = {
                    r.sop_instance_uid: r.path
                    for r in s.scalars(
                        select(Instance)
                        .join(Series, Series.id == Instance.series_id)
                        .where(Series.series_uid == series_uid)
                    )
                }
            storage = Path(env["DICOM_NODE_DATA_DIR"]) / "storage"
            lost = sum(1 for uid in acked_uids if uid not in rows or not (storage / rows[uid]).is_file())
            resent = storescu(series, port)
            if resent.returncode != 0:
                raise AssertionError(f"storescu failed after the restart: {resent.stdout}\n{resent.stderr}")

            def complete() -> Series | None:
                with db.session() as s:
                    row = s.scalars(select(Series).where(Series.series_uid == series_uid)).one_or_none()
                    return row if row is not None and row.status != "receiving" else None

            final = wait_until(complete, 180, f"series {series_uid} to complete after the restart", interval=0.5)
            with db.session() as s:
                jobs = len(s.scalars(select(Job).where(Job.series_id == final.id)).all())
        finally:
            db.dispose()
    finally:
        node.stop()
    partial = final.generation + (1 if final.instances < len(files) else 0)
    return RoundResult(len(acked_uids), lost, jobs, partial, final.instances, killed_after)
