"""``dicom-node up`` alone, with the embedded defaults (SQLite database, SQLite-file broker, no
server to install): a series sent with storescu comes back as SR, SC, SEG and KOS in Orthanc
(validated as in test_results.py), the admin app answers when it is installed; then ``up`` and its
worker are killed (SIGKILL) during the analysis of a second series, and after a restart that job
completes exactly once: that broker loses the killed worker's message, the job's stopped heartbeat
brings it back (the lost-job scan, ``worker.lost_after_seconds`` = 10 s here); ``up`` killed
alone takes its listeners and its worker with it.

At start ``up`` and ``serve`` say where the data, the database and the broker are, without a
password: the SQLite defaults through ``up``, PostgreSQL and Redis URLs with passwords through
``serve``, an AMQP URL through the line's own function (no RabbitMQ here).

Not covered: Redis redelivery (test_faults.py), PostgreSQL (test_results.py).
"""

from __future__ import annotations

import os
import signal
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

import psutil
import pytest
from sqlalchemy import func, select

from dicom_node.db.models import OutboxMessage
from dicom_node.service import where
from dicom_node.settings import load_settings
from tests.e2e.stack import Node, check_results, done_and_exported, series_uids
from tests.harness.jobs import hold_running_job
from tests.harness.peers import (
    Orthanc,
    create_postgres_database,
    drop_postgres_database,
    port_open,
    redis_db_url,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_up_alone_then_killed_during_inference(
    tmp_path: Path, orthanc: Orthanc, phantom: Callable[[int], Path]
) -> None:
    first, second = phantom(11), phantom(12)
    study_uid, series_uid = series_uids(first)
    node = Node(tmp_path, worker__lost_after_seconds=10)
    admin_port = int(node.env["DICOM_NODE_ADMIN_PORT"])
    node.configure([("ORTHANC", orthanc.dicom_port)])
    try:
        up = node.start("up", "--shutdown-seconds", "5")
        up.wait_for_port(node.port, timeout=120)
        data = node.data_dir
        start = f"data in {data}; database sqlite:///{data}/dicom-node.sqlite3; broker sqlite:///{data}/broker.sqlite3"
        assert start in up.output(), up.output()
        node.send(first)
        job = node.wait(done_and_exported(series_uid), 300, "the first job to be done and exported")
        assert job["attempts"] == 1
        check_results(orthanc, tmp_path / "pacs", job, study_uid, series_uid, node.db)
        if _admin_installed():
            wait_until(lambda: port_open(admin_port), 30, "the admin app")
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/", timeout=10) as resp:
                assert resp.status == 200

        _, second_uid = series_uids(second)
        node.send(second)
        killed = node.kill_mid_job(up, [second_uid], 180)
        assert killed.attempt == 1
        count_before = len(orthanc.instances())

        node.start("up", "--shutdown-seconds", "5").wait_for_port(node.port, timeout=120)
        job2 = node.wait(done_and_exported(second_uid), 300, "the killed job to be done after a restart")
        assert job2["attempts"] == 2
        with node.db.session() as s:
            messages = s.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.topic == "analyse", OutboxMessage.job_id == job2["id"])
            )
        assert messages == 2, "the lost-job scan requeues the job once"
        in_pacs = [orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances()]
        assert len(in_pacs) == len(set(in_pacs)) == count_before + sum(job2["output_counts"].values())
    finally:
        node.stop()
    assert all(p.proc is not None and p.proc.poll() is not None for p in node.processes)


def _admin_installed() -> bool:
    return find_spec("dicom_node.admin.server") is not None


def test_up_killed_takes_its_listeners_and_its_worker_with_it(
    tmp_path: Path, orthanc: Orthanc, phantom: Callable[[int], Path]
) -> None:
    """kill -9 of ``up`` alone (not its process group) during a job: its listeners end at once,
    its worker within ``--shutdown-seconds`` even when its job can not end (its row held here, as
    tests.harness.jobs does), and nothing serves or takes jobs for a node that is gone."""
    folder = phantom(13)
    _, series_uid = series_uids(folder)
    node = Node(tmp_path)
    node.configure([("ORTHANC", orthanc.dicom_port)])
    up = node.start("up", "--shutdown-seconds", "5")
    try:
        up.wait_for_port(node.port, timeout=120)
        node.send(folder)
        with hold_running_job(node.db, [series_uid], 300):
            assert up.proc is not None
            children = psutil.Process(up.proc.pid).children(recursive=True)
            workers = [c for c in children if "worker" in " ".join(c.cmdline())]
            assert workers and len(children) > len(workers), [c.cmdline() for c in children]
            os.kill(up.proc.pid, signal.SIGKILL)
            up.proc.wait(10)
            _, alive = psutil.wait_procs(children, timeout=30)
            assert alive == [], [(p.pid, p.cmdline()) for p in alive]
        wait_until(lambda: not port_open(node.port), 30, "the DICOM port to close")
    finally:
        node.stop()


PASSWORD = "Pw-never-shown-7"


def test_serve_says_where_its_database_and_broker_are_without_their_passwords(tmp_path: Path) -> None:
    """PostgreSQL (trust authentication: any password is taken) and Redis (its default user has
    none: any password is taken) with a password in their URLs; neither password reaches the
    console or the log file, the line names the user and the host."""
    database, name = create_postgres_database()
    database = database.replace("postgresql+psycopg2://postgres@", f"postgresql+psycopg2://postgres:{PASSWORD}@")
    broker = redis_db_url().replace("redis://", f"redis://default:{PASSWORD}@")
    node = Node(tmp_path, database_url=database, broker_url=broker)
    try:
        serve = node.start("serve", "--no-admin")
        proc = serve.proc
        assert proc is not None
        wait_until(lambda: "node running" in serve.output() or proc.poll() is not None, 120, "serve to start")
        console = serve.output()
        assert "node running" in console, console
        shown_database = database.replace(PASSWORD, "***")
        shown_broker = broker.replace(PASSWORD, "***")
        assert f"data in {node.data_dir}; database {shown_database}; broker {shown_broker}" in console, console
        log_file = (node.data_dir / "logs" / "dicom-node.log").read_text()
        assert shown_database in log_file
        assert PASSWORD not in console and PASSWORD not in log_file
    finally:
        node.stop()
        drop_postgres_database(name)


def test_an_amqp_password_is_masked_too(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, broker_url=f"amqp://node:{PASSWORD}@rabbitmq:5672//")
    line = where(settings)
    assert "broker amqp://node:***@rabbitmq:5672//" in line and PASSWORD not in line
