"""Faults, with real peers only (``dicom-node serve`` and ``worker`` subprocesses, Orthanc,
Redis, DCMTK's storescu, the shipped model):

- the whole worker killed (SIGKILL, main process included) during inference, with Redis as the
  broker: after a restart the message comes back through Redis' visibility timeout (set to 10 s;
  ``serve``'s lost-job scan is set out of reach so it can not be what recovers the job) and the
  job completes exactly once: DONE, attempt 2, one analyse message, one set of objects in PACS;
- a PACS that is down at export time (the SQLite-file broker here): the export retries with
  backoff and the results arrive once Orthanc is back; a destination that refuses the association
  (unknown called AE title) is failed at its first answer and never tried again. An attempt whose
  association request got no answer within the export timeout (the refusing Orthanc stalled on a
  loaded machine) refused nothing and is retried, so the test reads the worker's log: every
  attempt before the refusal must be such an unanswered one, and none may follow it.

Not covered here: a kill with the SQLite-file broker (test_up.py), validation of the objects
(test_results.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import func, select

from dicom_node.db.models import Event, OutboxMessage
from tests.e2e.stack import Node, done_and_exported, job_of, series_uids
from tests.harness.peers import Orthanc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_worker_killed_during_inference_finishes_once_after_redis_redelivers(
    tmp_path: Path, redis_url: str, orthanc: Orthanc, phantom: Callable[[int], Path]
) -> None:
    series = phantom(12)
    study_uid, series_uid = series_uids(series)
    node = Node(tmp_path, broker_url=redis_url, worker__visibility_timeout_seconds=10, worker__lost_after_seconds=3600)
    node.configure([("ORTHANC", orthanc.dicom_port)])
    try:
        node.start("serve", "--no-admin").wait_for_port(node.port)
        worker = node.start("worker")
        node.send(series)
        node.kill_mid_job(worker, [series_uid], 180)
        killed_at = time.monotonic()
        node.start("worker")
        job = node.wait(done_and_exported(series_uid), 300, "the job to be done after the worker was killed")
        assert time.monotonic() - killed_at >= 5, "the message came back before the visibility timeout could pass"
        assert job["attempts"] == 2
        with node.db.session() as s:
            analyse_messages = s.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.topic == "analyse")
            )
            takeovers = [e.message for e in s.scalars(select(Event).where(Event.category == "job"))]
        assert any("attempt 2 runs on" in m for m in takeovers), takeovers
        assert analyse_messages == 1, "the job must come back through the broker, not a requeue"
        in_pacs = sorted(orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances())
        assert len(in_pacs) == len(set(in_pacs)) and len(in_pacs) == sum(job["output_counts"].values())
        assert [(e["status"], e["attempts"]) for e in job["exports"]] == [("done", 1)]
    finally:
        node.stop()


def test_pacs_down_then_back_and_a_refusing_destination(tmp_path: Path, phantom: Callable[[int], Path]) -> None:
    series = phantom(13)
    _, series_uid = series_uids(series)
    pacs = Orthanc(tmp_path / "pacs").start()
    refusing = Orthanc(tmp_path / "refusing").start()
    pacs.stop()  # down when the results are ready; same ports when it comes back
    node = Node(tmp_path)  # the embedded defaults: SQLite database and SQLite-file broker
    node.configure([("ORTHANC", pacs.dicom_port), ("WRONGAET", refusing.dicom_port)])
    try:
        node.start("serve", "--no-admin").wait_for_port(node.port)
        worker = node.start("worker")
        node.send(series)

        def retrying_and_refused(jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
            job = job_of(jobs, series_uid)
            if not job or job["status"] != "done":
                return None
            by_title = {e["destination"]: e for e in job["exports"]}
            down, refuser = by_title["ORTHANC"], by_title["WRONGAET"]
            return (
                job
                if down["status"] == "retrying" and down["attempts"] >= 2 and refuser["status"] == "failed"
                else None
            )

        job = node.wait(retrying_and_refused, 300, "the export to the down PACS to retry and the refused one to fail")
        refused = {e["destination"]: e for e in job["exports"]}["WRONGAET"]
        assert "refused (not retried)" in refused["last_error"] and "rejected" in refused["last_error"].lower()
        attempts_to_refuser = _attempts_logged(worker.output(), "WRONGAET")
        assert len(attempts_to_refuser) == refused["attempts"], attempts_to_refuser
        assert "association rejected" in attempts_to_refuser[-1], attempts_to_refuser
        # Attempts before the refusal met an Orthanc too busy to answer, or one whose connection closed
        # before its answer twice over (the sender asks once more at once): retried, never a refusal.
        unanswered = attempts_to_refuser[:-1]
        assert all(
            "no answer to the association request" in line or "closed before an answer" in line for line in unanswered
        ), attempts_to_refuser

        pacs.start()
        job = node.wait(
            lambda jobs: (
                (j := job_of(jobs, series_uid))
                and {e["destination"]: e for e in j["exports"]}["ORTHANC"]["status"] == "done"
                and j
            ),
            120,
            "the results to reach the PACS once it is back",
        )
        exports = {e["destination"]: e for e in job["exports"]}
        assert exports["ORTHANC"]["attempts"] >= 2
        assert exports["WRONGAET"]["status"] == "failed" and exports["WRONGAET"]["attempts"] == refused["attempts"], (
            "no retry of a refusal"
        )
        assert len(_attempts_logged(worker.output(), "WRONGAET")) == refused["attempts"], (
            "no association after the refusal"
        )
        assert len(pacs.instances()) == sum(job["output_counts"].values())
        assert refusing.instances() == []
    finally:
        node.stop()
        pacs.stop()
        refusing.stop()


def _attempts_logged(log: str, title: str) -> list[str]:
    """The sender's line for each failed association attempt to ``title`` (dicom_node.sending.scu
    logs one per attempt that did not end in success)."""
    return [line for line in log.splitlines() if f"export to {title}@" in line]
