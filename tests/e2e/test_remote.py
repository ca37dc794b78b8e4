"""Workers that share nothing with the node but the network (dicom_node.pipeline.remote): ``serve``
(with its admin app and ``remote.token``) and workers with data dirs of their own, PostgreSQL and
Redis shared, Orthanc as the PACS, storescu as the scanner, all as real processes on loopback.

- a worker with its own disk fetches the series over /internal/v1/, keeps none of it afterwards,
  hands the results to the node before the job is done (the node's results dir holds every output,
  as the admin pages need), and sends them to PACS itself;
- a second such worker, which never saw the job, sends it again on ``jobs export``: it fetches the
  result files it lacks from the node; PACS still holds each object once (same UIDs);
- a worker killed mid-job leaves the series it fetched in its cache; started again, it removes it.

Not covered here: the endpoints' access rule and a worker on the node's own data dir (tests/admin/
test_internal.py); separate hosts (the containers of docker/test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from dicom_node.db.models import Job
from tests.e2e.conftest import SLICES
from tests.e2e.stack import Node, done_and_exported, job_of, series_uids
from tests.harness.jobs import hold_running_job
from tests.harness.peers import NodeProcess, Orthanc, cli, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "remote-workers-test-token-0123456789"


def _remote_worker(node: Node, data_dir: Path) -> NodeProcess:
    env = dict(node.env, DICOM_NODE_DATA_DIR=str(data_dir))
    env["DICOM_NODE_REMOTE__NODE_URL"] = f"http://127.0.0.1:{node.env['DICOM_NODE_ADMIN_PORT']}"
    env["DICOM_NODE_REMOTE__TOKEN"] = TOKEN
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = NodeProcess(env, ("worker",)).start()
    node.processes.append(proc)
    return proc


def test_workers_with_their_own_disks(
    tmp_path: Path, postgres_url: str, redis_url: str, orthanc: Orthanc, phantom: Callable[[int], Path]
) -> None:
    folder = phantom(41)
    _, series_uid = series_uids(folder)
    node = Node(tmp_path, database_url=postgres_url, broker_url=redis_url, remote__token=TOKEN)
    node.configure([("ORTHANC", orthanc.dicom_port)])
    try:
        node.start("serve").wait_for_port(node.port)
        first_dir = tmp_path / "worker-1"
        first = _remote_worker(node, first_dir)
        node.send(folder)
        job = node.wait(done_and_exported(series_uid), 300, "the job to be done and exported by the remote worker")

        log = first.output()
        assert "no shared disk: series are fetched" in log, log[-3000:]
        assert f"fetched {SLICES} of {SLICES} instance(s)" in log, log[-3000:]
        assert not list((first_dir / "storage").rglob("*.dcm")), "the worker keeps no series"
        assert {"fetch", "upload"} <= set(job["timings"]), job["timings"]
        with node.db.session() as s:
            row = s.get(Job, job["id"])
            assert row is not None
            outputs = list(row.outputs or [])
        node_results = node.data_dir / "results"
        assert outputs and all((node_results / o["path"]).is_file() for o in outputs), (
            "the node holds every result file"
        )
        assert (node_results / str(job["id"]) / "result.json").is_file()
        in_pacs = sorted(orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances())
        assert in_pacs == sorted(o["sop_instance_uid"] for o in outputs)

        first.stop()
        second_dir = tmp_path / "worker-2"
        second = _remote_worker(node, second_dir)
        cli(node.env, "jobs", "export", str(job["id"]))
        node.wait(
            lambda jobs: (
                (j := job_of(jobs, series_uid))
                and all(
                    e["status"] == "done" and e["finished_at"] != job["exports"][0]["finished_at"] for e in j["exports"]
                )
                and j
            ),
            300,
            "the second worker to send the results again",
        )
        assert all((second_dir / "results" / o["path"]).is_file() for o in outputs), (
            "the second worker fetched the result files it lacked"
        )
        assert "instance(s)" not in second.output(), "no series was fetched for an export"
        again = sorted(orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances())
        assert again == in_pacs, "sent again: the same objects, each once"
    finally:
        node.stop()


def test_a_worker_killed_mid_job_clears_what_it_fetched_when_it_starts_again(
    tmp_path: Path, postgres_url: str, redis_url: str, orthanc: Orthanc, phantom: Callable[[int], Path]
) -> None:
    """The series a remote worker fetched for a job stays in its cache when it is killed; at its
    next start it is removed (the job itself goes to a worker again when its heartbeat is lost)."""
    folder = phantom(42)
    _, series_uid = series_uids(folder)
    # The killed worker's job goes back to the queue once its heartbeat (every 5 s) is 20 s old.
    node = Node(
        tmp_path, database_url=postgres_url, broker_url=redis_url, remote__token=TOKEN, worker__lost_after_seconds=20
    )
    node.configure([("ORTHANC", orthanc.dicom_port)])
    try:
        node.start("serve").wait_for_port(node.port)
        cache = tmp_path / "worker"
        worker = _remote_worker(node, cache)
        node.send(folder)
        # The job can not end while its row is held (tests.harness.jobs): killed once it fetched.
        with hold_running_job(node.db, [series_uid], 300):
            wait_until(
                lambda: len(list((cache / "storage").rglob("*.dcm"))) == SLICES, 120, "the worker to fetch the series"
            )
            node.kill_tree(worker)
        left = list((cache / "storage").rglob("*.dcm"))
        assert len(left) == SLICES, f"{len(left)} files in the killed worker's cache"
        again = _remote_worker(node, cache)
        node.wait(done_and_exported(series_uid), 600, "the job to be done by the restarted worker")
        assert "removed 1 series left in this worker's cache" in again.output(), again.output()[-3000:]
        assert not list((cache / "storage").rglob("*.dcm"))
    finally:
        node.stop()
