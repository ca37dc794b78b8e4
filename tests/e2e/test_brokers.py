"""Redis and RabbitMQ as they run in production, each a private server of this test (started,
restarted and removed by it: tests.harness.brokers), with PostgreSQL, ``dicom-node serve``
and one worker (one process) as subprocesses, Orthanc as the PACS and storescu as the scanner.

Three series are sent at once, so two wait in the queue behind the first. Then:

1. the broker is restarted (a clean stop and start) while the worker runs the first job and the
   other two sit in the queue;
2. the worker is killed (SIGKILL, every process) during the job it runs next, and started again.

Afterwards every job is done exactly once: nothing lost (three jobs done, three analyse messages
in the outbox: the broker, not ``serve``'s lost-job scan, which is set out of reach, brought the
killed job back), nothing duplicated (each export sent in one attempt; PACS holds each job's
objects once). Redis keeps its queue across the restart through its append-only file and hands the
killed job back after its visibility timeout (10 s here); RabbitMQ keeps its durable quorum queues
on disk and hands the job back when the killed worker's connection closes.

Not covered: a broker that loses its disk (then ``serve``'s lost-job scan and the export scheduler
recover from the database: tests/jobs), a RabbitMQ cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import func, select

from dicom_node.db.models import OutboxMessage
from tests.e2e.stack import Node, done_and_exported, job_of, series_uids
from tests.harness.brokers import PrivateRabbitMQ, PrivateRedis
from tests.harness.peers import Orthanc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_broker_restarted_and_worker_killed_lose_and_duplicate_nothing(
    tmp_path: Path, kind: str, postgres_url: str, orthanc: Orthanc, phantom: Callable[[int], Path]
) -> None:
    broker: PrivateRedis | PrivateRabbitMQ = (
        PrivateRedis(tmp_path / "redis") if kind == "redis" else PrivateRabbitMQ(tmp_path / "rabbitmq")
    )
    broker.start()
    folders = [phantom(seed) for seed in (31, 32, 33)]
    uids = [series_uids(f)[1] for f in folders]
    node = Node(
        tmp_path,
        database_url=postgres_url,
        broker_url=broker.url,
        worker__concurrency=1,
        worker__visibility_timeout_seconds=10,
        worker__lost_after_seconds=3600,
    )
    node.configure([("ORTHANC", orthanc.dicom_port)])
    try:
        node.start("serve", "--no-admin").wait_for_port(node.port)
        worker = node.start("worker")
        for folder in folders:
            node.send(folder)

        first = node.wait(_any_running(uids), 240, "a job to run")
        broker.restart()
        # The one worker process runs one job at a time: another job running means the first one
        # has ended. Watched from here, not after a wait for the first one's end: a job of these
        # phantoms takes a few seconds, and a wait that polls the job list could miss both others.
        second = node.kill_mid_job(worker, [u for u in uids if u != first], 300).series_uid
        node.wait(
            lambda jobs: (j := job_of(jobs, first)) and j["status"] == "done" and j,
            60,
            "the job running at the broker restart to be done",
        )
        node.start("worker")

        done = [node.wait(done_and_exported(uid), 400, f"job of {uid} to be done and exported") for uid in uids]
        killed = next(j for j in done if j["series_uid"] == second)
        assert killed["attempts"] == 2, killed
        with node.db.session() as s:
            analyse_messages = s.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.topic == "analyse")
            )
        assert analyse_messages == 3, "every job came back through the broker, none through a requeue"
        for job in done:
            assert [(e["status"], e["attempts"]) for e in job["exports"]] == [("done", 1)], job["exports"]
        in_pacs = sorted(orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances())
        assert len(in_pacs) == len(set(in_pacs)) == sum(sum(j["output_counts"].values()) for j in done)
    finally:
        node.stop()
        broker.stop()


def _any_running(uids: list[str]) -> Callable[[list[dict[str, Any]]], str | None]:
    def check(jobs: list[dict[str, Any]]) -> str | None:
        for uid in uids:
            job = job_of(jobs, uid)
            if job and job["status"] == "running":
                return uid
        return None

    return check
