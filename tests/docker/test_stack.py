"""The container images and the compose stack, as a site would run them: docker/build makes the
images with podman (a locally made Debian base, the node's image, PostgreSQL, RabbitMQ and Orthanc
from Debian's packages), then podman-compose runs docker/compose.yaml with compose.test.yaml:
PostgreSQL, RabbitMQ, the node (``serve``) and two workers in separate containers with no shared
volume (each fetches the series from the node over the network), Orthanc as the PACS.

From the host, storescu sends two phantom series at once: both are analysed, by different
workers, and every result object is in Orthanc once. A third series is sent, and the worker
running its job is killed (SIGKILL on its container) mid-job: the other worker takes the job over
(RabbitMQ redelivers it; the job's heartbeat tells the takeover) and its results reach Orthanc.

Run on its own by docker/test (``tests/run -m container``); the whole suite runs it too. Not
covered: GPUs (none here), Docker's own engine (podman here), Kubernetes (tests/docker/
test_kubernetes.py validates the manifests only).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest

from tests.e2e.conftest import KIND, MATRIX, SLICES
from tests.harness import jobs as harness_jobs
from tests.harness.peers import free_port, port_open, storescu, wait_until
from tests.harness.synthetic import clear_phantom

# The first build of the images alone may take longer than the suite's 600 s per test.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
TAG = os.environ.get("IMAGE_TAG", "test")
CONTAINERS_CONF = str(ROOT / "docker" / "containers.conf")


def _run(
    args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args,
        cwd=ROOT,
        env=env or dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


# Run by `python -c` in the node's container (its settings name the database): holds the running
# job of argv[1] (waiting up to argv[2] seconds), prints its worker, and lets go at a line on stdin.
# The image holds the node, not tests/: the harness module's source goes along with the script
# (it imports only the node and SQLAlchemy).
HOLD_RUNNING_JOB = (
    Path(harness_jobs.__file__).read_text()
    + """
import sys
from dicom_node.settings import load_settings
db = Database(load_settings().effective_database_url)
with hold_running_job(db, [sys.argv[1]], float(sys.argv[2])) as job:
    print(job.worker, flush=True)
    sys.stdin.readline()
"""
)


@pytest.fixture(scope="module")
def images() -> None:
    """docker/build: a first run builds for minutes; later ones find podman's layers."""
    _run([str(ROOT / "docker" / "build")], timeout=3600)


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.project = f"covidct{uuid.uuid4().hex[:6]}"
        self.dicom_port, self.admin_port, self.orthanc_port = free_port(), free_port(), free_port()
        self.env = dict(
            os.environ,
            CONTAINERS_CONF=CONTAINERS_CONF,
            POSTGRES_PASSWORD=secrets.token_hex(12),
            RABBITMQ_PASSWORD=secrets.token_hex(12),
            DICOM_NODE_TOKEN=secrets.token_hex(24),
            NODE_IMAGE=f"localhost/covid-ct-node:{TAG}",
            POSTGRES_IMAGE=f"localhost/covid-ct-postgres:{TAG}",
            RABBITMQ_IMAGE=f"localhost/covid-ct-rabbitmq:{TAG}",
            ORTHANC_IMAGE=f"localhost/covid-ct-orthanc:{TAG}",
            BASE_IMAGE="localhost/covid-ct-base:bookworm",
            DICOM_PORT=str(self.dicom_port),
            ADMIN_PORT=str(self.admin_port),
            ORTHANC_HTTP_PORT=str(self.orthanc_port),
            LISTENER_PROCESSES="1",
            WORKER_DEVICE="cpu",
        )
        self.compose = [
            "podman-compose",
            "-p",
            self.project,
            "-f",
            "docker/compose.yaml",
            "-f",
            "docker/compose.test.yaml",
        ]

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def up(self) -> None:
        _run([*self.compose, "up", "-d"], env=self.env, timeout=900)

    def down(self) -> None:
        """Containers, their volumes (named and anonymous) and the network: nothing left behind."""
        volumes = {f"{self.project}_{v}" for v in ("pgdata", "rabbitmqdata", "nodedata")}
        for service in ("postgres", "rabbitmq", "node", "worker-1", "worker-2", "orthanc"):
            mounts = _run(
                ["podman", "inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", self.container(service)], check=False
            ).stdout.split()
            volumes.update(mounts)
        _run([*self.compose, "down", "-v"], env=self.env, timeout=600, check=False)
        for volume in sorted(volumes):
            _run(["podman", "volume", "rm", "-f", volume], check=False)
        _run(["podman", "network", "rm", "-f", f"{self.project}_default"], check=False)

    def logs(self) -> str:
        out = []
        for service in ("node", "worker-1", "worker-2", "rabbitmq", "postgres", "orthanc"):
            proc = _run(["podman", "logs", "--tail", "40", self.container(service)], check=False)
            out.append(f"--- {service} ---\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
        return "\n".join(out)

    def node(self, *args: str) -> str:
        return _run(["podman", "exec", self.container("node"), "dicom-node", *args], timeout=120).stdout

    def jobs(self) -> list[dict[str, Any]]:
        return list(json.loads(self.node("jobs", "list", "--json")))

    def http(self, port: int, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as rsp:
            return json.loads(rsp.read())

    def hostname(self, service: str) -> str:
        return _run(["podman", "inspect", "-f", "{{.Config.Hostname}}", self.container(service)]).stdout.strip()

    def wait(self, what: str, timeout: float, predicate: Any) -> Any:
        try:
            return wait_until(predicate, timeout, what, interval=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\njobs: {self._jobs_or_why()}\n{self.logs()}") from None

    @contextlib.contextmanager
    def running_job_held(self, series_uid: str, timeout: float) -> Iterator[str]:
        """Wait for the job of ``series_uid`` to run and yield its worker (host:pid) while the
        job's row is locked (tests.harness.jobs, in the node's container, on the stack's
        database), so that the job can not end before the block does: a worker killed inside is
        killed mid-job. Polling through `podman exec dicom-node jobs list` took seconds per
        look, in which a job could run from start to end."""
        holder = subprocess.Popen(
            ["podman", "exec", "-i", self.container("node"), "python", "-c", HOLD_RUNNING_JOB, series_uid,
             str(timeout)],
            cwd=ROOT, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdin is not None and holder.stdout is not None
        try:
            worker = holder.stdout.readline().strip()
            if not worker:
                holder.wait(timeout=60)
                raise AssertionError(
                    f"the job of {series_uid} was not seen running: "
                    f"{holder.stderr.read() if holder.stderr else ''}\n{self.logs()}"
                )
            yield worker
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(timeout=60) == 0, holder.stderr.read() if holder.stderr else ""
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()

    def _jobs_or_why(self) -> Any:
        try:
            return self.jobs()
        except AssertionError as exc:
            return str(exc)


@pytest.fixture
def stack(images: None, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        s.up()
        yield s
    finally:
        s.down()


def _healthy(stack: Stack) -> bool:
    try:
        health = stack.http(stack.admin_port, "/health")
    except (OSError, ValueError):
        return False
    return bool(health.get("checks", health).get("database", {}).get("ok")) and bool(
        health.get("checks", health).get("broker", {}).get("ok")
    )


def _done(jobs: list[dict[str, Any]], uid: str) -> dict[str, Any] | None:
    for job in jobs:
        if job["series_uid"] == uid:
            if job["status"] == "failed":
                raise AssertionError(f"job failed: {job['reason']}")
            if job["status"] == "done" and job["exports"] and all(e["status"] == "done" for e in job["exports"]):
                return job
    return None


def test_two_workers_without_a_shared_volume_and_one_killed_mid_job(stack: Stack, tmp_path: Path) -> None:
    series = [clear_phantom(KIND, tmp_path / f"p{seed}", seed, slices=SLICES, rows=MATRIX) for seed in (51, 52, 53)]
    uids = [_series_uid(folder) for folder in series]
    stack.wait("the node's /health to answer with the database and the broker up", 300, lambda: _healthy(stack))
    stack.node("ae", "add-destination", "ORTHANC", "--host", "orthanc", "--port", "4242")
    stack.node(
        "ae",
        "add-local",
        "COVIDNODE",
        "--port",
        "11112",
        "--quiet-seconds",
        "2",
        "--send-results-to",
        "ORTHANC",
        "--allow-any-source",
    )
    stack.wait("the listener on the published port", 60, lambda: port_open(stack.dicom_port))
    time.sleep(2)  # the listener process reloads the AE table every second

    with ThreadPoolExecutor(2) as pool:
        sent = list(pool.map(lambda folder: storescu(folder, stack.dicom_port), series[:2]))
    assert all(p.returncode == 0 for p in sent), [p.stderr for p in sent]
    first = [
        stack.wait(f"job of {uid} done and exported", 900, lambda uid=uid: _done(stack.jobs(), uid)) for uid in uids[:2]
    ]
    workers = {job["worker"].split(":")[0] for job in first}
    assert len(workers) == 2, f"both analyses ran on one worker: {[j['worker'] for j in first]}"
    assert workers == {stack.hostname("worker-1"), stack.hostname("worker-2")}
    assert all("fetch" in job["timings"] and "upload" in job["timings"] for job in first), (
        "the workers fetched the series over the network"
    )
    in_pacs = stack.http(stack.orthanc_port, "/instances")
    assert len(in_pacs) == sum(sum(j["output_counts"].values()) for j in first)

    assert storescu(series[2], stack.dicom_port).returncode == 0
    with stack.running_job_held(uids[2], 600) as worker:
        host = worker.split(":")[0]
        victim = "worker-1" if host == stack.hostname("worker-1") else "worker-2"
        survivor = "worker-2" if victim == "worker-1" else "worker-1"
        _run(["podman", "kill", "--signal", "KILL", stack.container(victim)])
    job = stack.wait("the other worker to finish the job", 900, lambda: _done(stack.jobs(), uids[2]))
    assert job["worker"].split(":")[0] == stack.hostname(survivor), job["worker"]
    assert job["attempts"] == 2, job
    objects = [
        stack.http(stack.orthanc_port, f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
        for i in stack.http(stack.orthanc_port, "/instances")
    ]
    assert len(objects) == len(set(objects)) == sum(sum(j["output_counts"].values()) for j in [*first, job])


def _series_uid(folder: Path) -> str:
    first = next(p for p in sorted(folder.iterdir()) if p.suffix == ".dcm")
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)
