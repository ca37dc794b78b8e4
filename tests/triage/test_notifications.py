"""Notifications of finished jobs from a running ``dicom-node serve`` (SQLite) to real receivers
that are not the node's code (tests.harness.receivers): python-hl7's MLLP server as the RIS,
aiosmtpd requiring STARTTLS with a self-signed certificate, the standard library's HTTP server
checking the webhook's HMAC signature. Channels and rules are set with the command line.

Jobs are ended through the job state machine itself (dicom_node.jobs.analyses.claim, finish and
fail, as a worker ends them) with results written here: no model runs, so the probabilities are
this file's, and what each receiver got is compared with the job as the node lists it.

Covers: the ORU^R01 as python-hl7 reads it (MSH-9, MSH-10 = the notification's message id, PID,
OBR, OBX of the decision, probabilities, involvement and priority, the notice), the webhook's JSON
and signature, the e-mail's templated subject and body over STARTTLS; the rules (a normal result
notifies nobody, a failed analysis the failure rule); a NAK (AR) failing at once with an event,
AE and an endpoint that is down retried with backoff until delivered; each delivery and final
failure on the job and in the audit log; serve killed (SIGKILL) while it waits for an HL7
acknowledgement: after the restart the message is sent again with the same MSH-10, nothing that
was acknowledged is sent twice, nothing is lost.

Not covered: a worker ending real jobs (the state machine is the same; tests/e2e/test_priority.py
runs real jobs), the latency (benchmarks/triage.py).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import hl7
import pytest
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import AuditEntry, Event, Job, LocalAE, Series
from dicom_node.jobs import analyses
from dicom_node.jobs.queries import job_rows
from dicom_node.jobs.states import JobStatus, SeriesStatus
from dicom_node.triage.priority import Priority
from tests.harness.peers import NodeProcess, cli, free_port, node_env, wait_until
from tests.harness.receivers import MLLPReceiver, SMTPReceiver, WebhookReceiver

pytestmark = pytest.mark.integration

SECRET = "a-webhook-secret-of-the-test"
_serial = itertools.count(1)


class NotifyingNode:
    """``serve`` with a local AE (to know it is up), notifications polled fast, short backoff."""

    def __init__(self, tmp: Path) -> None:
        self.env = node_env(
            tmp / "data",
            admin_port=free_port(),
            listener__processes=1,
            notify__poll_seconds=0.1,
            notify__backoff_base_seconds=0.5,
            notify__backoff_cap_seconds=2,
            notify__timeout_seconds=5,
            triage__node_url="http://node.test:8080",
        )
        self.port = free_port()
        cli(self.env, "db", "upgrade", timeout=300)  # a loaded machine starts commands slowly
        cli(self.env, "ae", "add-local", "NOTIFYNODE", "--port", str(self.port), timeout=300)
        self.db = Database(f"sqlite:///{tmp / 'data' / 'dicom-node.sqlite3'}")
        self.serve: NodeProcess | None = None

    def start(self) -> None:
        self.serve = NodeProcess(self.env, ["serve", "--no-admin"]).start()
        self.serve.wait_for_port(self.port, timeout=240)  # a loaded machine starts it slowly

    def kill(self) -> None:
        assert self.serve is not None
        self.serve.kill()

    def stop(self) -> None:
        if self.serve is not None:
            self.serve.stop()
        self.db.dispose()

    def triage(self, *args: str) -> None:
        cli(self.env, "triage", *args, timeout=300)  # a loaded machine starts the command slowly

    def job(self, job_id: int) -> dict[str, Any]:
        """The job as the node lists it (the read model of ``jobs list --json`` and the API)."""
        (row,) = job_rows(self.db, job_ids=[job_id])
        return row

    def end_job(self, decision: str, *, fail: bool = False, priority: Priority = Priority.STAT) -> int:
        """A complete series and its job, ended as a worker ends one (the state machine)."""
        n = next(_serial)
        with self.db.session() as s:
            ae = s.scalar(select(LocalAE))
            assert ae is not None
            series = Series(
                series_uid=f"2.25.{n}1", study_uid=f"2.25.{n}", local_ae_id=ae.id, calling_ae="ER_CT",
                status=SeriesStatus.COMPLETE.value, patient_id=f"P{n}", patient_name=f"Doe^Jane^{n}",
                accession_number=f"ACC{n}", study_description="CT THORAX",
            )  # fmt: skip
            s.add(series)
            s.flush()
            job = Job(series_id=series.id, status=JobStatus.QUEUED.value, priority=int(priority))
            s.add(job)
            s.flush()
            job_id = job.id
        claimed = analyses.claim(self.db, job_id, worker="test", stale_after=60)
        assert isinstance(claimed, analyses.Claimed)
        if fail:
            assert analyses.fail(self.db, claimed, "the series could not be read: test")
        else:
            probabilities = {"covid": 0.07, "cap": 0.11, "normal": 0.82}
            if decision in ("covid", "cap"):
                probabilities = {"covid": 0.81, "cap": 0.12, "normal": 0.07}
            result = {"decision": decision, "probabilities": probabilities, "lung_involvement_percent": 14.25}
            analyses.finish(self.db, claimed, fields={"decision": decision, "result": result})
        return job_id


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NotifyingNode]:
    started = NotifyingNode(tmp_path)
    yield started
    started.stop()


def delivered(node: NotifyingNode, job_id: int, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        told = node.job(job_id)["notifications"]
        finished = [n for n in told if n["status"] in ("done", "failed")]
        return told if len(finished) >= count else None

    return list(wait_until(check, timeout, f"{count} notification(s) of job {job_id} to end"))


def test_each_channel_gets_the_result_as_its_kind_says(node: NotifyingNode, tmp_path: Path) -> None:
    ris, mail, hook = MLLPReceiver().start(), SMTPReceiver(tmp_path / "smtp").start(), WebhookReceiver(SECRET).start()
    try:
        node.triage("add-channel", "ris", "--kind", "hl7", "--host", "127.0.0.1", "--port", str(ris.port),
                    "--receiving-application", "RIS")  # fmt: skip
        node.triage("add-channel", "chat", "--kind", "webhook", "--url", hook.url, "--secret", SECRET)
        node.triage("add-channel", "reading-room", "--kind", "email", "--host", "127.0.0.1", "--port",
                    str(mail.controller.port), "--sender", "node@example.org", "--to", "ct@example.org",
                    "--ca-file", str(mail.cert))  # fmt: skip
        node.triage("add-notify-rule", "suspicious", "--channels", "ris,chat,reading-room", "--decisions", "covid,cap")
        node.triage("add-notify-rule", "failures", "--channels", "reading-room", "--decisions", "failed")
        node.start()
        covid = node.end_job("covid")
        normal = node.end_job("normal")
        failed = node.end_job("", fail=True)
        told = {n["channel"]: n for n in delivered(node, covid, 3)}
        delivered(node, failed, 1)
    finally:
        ris.stop()
        mail.stop()
        hook.stop()

    job = node.job(covid)
    assert {c: n["status"] for c, n in told.items()} == {"ris": "done", "chat": "done", "reading-room": "done"}
    assert node.job(normal)["notifications"] == [], "no rule matches a normal result"

    (received,) = ris.received
    msg = hl7.parse(received.text)
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(msg.segment("MSH")[12]) == "2.5.1"
    assert str(msg.segment("MSH")[10]) == told["ris"]["message_id"] == received.ident
    assert str(msg.segment("MSH")[5]) == "RIS"
    assert str(msg.segment("PID")[3]) == job["patient_id"] and str(msg.segment("PID")[5]) == job["patient_name"]
    assert str(msg.segment("OBR")[2]) == job["accession_number"] and str(msg.segment("OBR")[25]) == "F"
    assert "Not for clinical use." in str(msg.segment("NTE")[3])
    obx = {str(o[3][0][0]): o for o in msg.segments("OBX")}
    assert str(obx["DECISION"][5][0][0]) == "covid" and str(obx["DECISION"][8]) == "A"
    for cls, p in job["probabilities"].items():
        assert float(str(obx[f"P_{cls.upper()}"][5])) == pytest.approx(p, abs=1e-4)
    assert float(str(obx["LUNG_INV"][5])) == pytest.approx(job["lung_involvement_percent"], abs=0.006)
    assert str(obx["PRIORITY"][5]) == "stat" and str(obx["STUDY_UID"][5]) == job["study_uid"]
    assert told["ris"]["response"] == f"MSA AA {told['ris']['message_id']}"

    (posted,) = hook.received
    assert hook.refused == [], "every webhook carried a valid signature"
    body = posted.detail["json"]
    assert posted.ident == body["delivery_id"] == told["chat"]["message_id"]
    assert (body["event"], body["decision"], body["priority"], body["job_id"]) == ("result", "covid", "stat", covid)
    assert body["probabilities"] == job["probabilities"] and body["notice"] == "Not for clinical use."
    assert body["job_url"] == f"http://node.test:8080/jobs/{covid}"

    by_id = {m.ident.strip("<>").split("@")[0]: m for m in mail.received}
    covid_mail = by_id[told["reading-room"]["message_id"]]
    assert covid_mail.detail["tls"] is True, "sent over STARTTLS"
    assert covid_mail.detail["subject"] == f"[STAT] CT covid - {job['accession_number']} (not for clinical use)"
    assert "p(covid):       0.81" in covid_mail.detail["body"] and "Not for clinical use." in covid_mail.detail["body"]
    (failed_note,) = node.job(failed)["notifications"]
    failed_mail = by_id[failed_note["message_id"]]
    assert (
        failed_mail.detail["subject"].startswith("[STAT] CT failed")
        and "could not be read" in failed_mail.detail["body"]
    )

    with node.db.session() as s:
        audited = [
            (a.action, a.target_id, a.target) for a in s.scalars(select(AuditEntry).where(AuditEntry.actor == "node"))
        ]
    assert sorted(audited) == sorted(
        [("notification.delivered", str(covid), c) for c in ("ris", "chat", "reading-room")]
        + [("notification.delivered", str(failed), "reading-room")]
    )


def test_a_refusal_fails_at_once_and_errors_are_retried_until_delivered(node: NotifyingNode, tmp_path: Path) -> None:
    answers: dict[str, list[str]] = {}

    def answer(control_id: str) -> str:
        # The first message is refused (AR); the second gets an error (AE) once, then AA.
        plan = answers.setdefault(control_id, ["AR"] if len(answers) == 0 else ["AE", "AA"])
        return plan.pop(0) if len(plan) > 1 else plan[0]

    ris = MLLPReceiver(answer=answer).start()
    hook_port = free_port()  # nothing listens there yet: the webhook is down
    try:
        node.triage("add-channel", "ris", "--kind", "hl7", "--host", "127.0.0.1", "--port", str(ris.port))
        node.triage("add-channel", "chat", "--kind", "webhook", "--url", f"http://127.0.0.1:{hook_port}/x",
                    "--secret", SECRET)  # fmt: skip
        node.triage("add-notify-rule", "covid-to-ris", "--channels", "ris", "--decisions", "covid")
        node.triage("add-notify-rule", "cap-to-both", "--channels", "ris,chat", "--decisions", "cap")
        node.start()
        refused = node.end_job("covid")
        (note,) = delivered(node, refused, 1)
        assert (note["status"], note["attempts"]) == ("failed", 1), note
        assert note["last_error"].startswith("refused (not sent again): rejected: MSA AR")

        retried = node.end_job("cap")
        wait_until(
            lambda: [n for n in node.job(retried)["notifications"] if n["channel"] == "chat" and n["attempts"] >= 2],
            120,
            "the webhook to be tried twice while it is down",
        )
        down = next(n for n in node.job(retried)["notifications"] if n["channel"] == "chat")
        assert down["status"] in ("retrying", "sending") and "refused" in down["last_error"].lower(), down
        hook = WebhookReceiver(SECRET, port=hook_port).start()
        try:
            told = {n["channel"]: n for n in delivered(node, retried, 2)}
        finally:
            hook.stop()
    finally:
        ris.stop()
    assert told["ris"]["status"] == "done" and told["ris"]["attempts"] == 2, told["ris"]
    # Attempts count from when a try starts: one "sending" when the receiver came up may be the one
    # that got through.
    failed_while_down = down["attempts"] - (1 if down["status"] == "sending" else 0)
    assert failed_while_down >= 1, down
    assert told["chat"]["status"] == "done" and told["chat"]["attempts"] > failed_while_down, told["chat"]
    assert len(hook.received) == 1
    with node.db.session() as s:
        events = [e.message for e in s.scalars(select(Event).where(Event.category == "notification"))]
        actions = sorted(a.action for a in s.scalars(select(AuditEntry).where(AuditEntry.actor == "node")))
    assert len(events) == 1 and "notification to ris failed" in events[0]
    assert actions == ["notification.delivered", "notification.delivered", "notification.failed"]


def test_serve_killed_while_sending_loses_nothing_and_repeats_nothing_acknowledged(node: NotifyingNode) -> None:
    ris = MLLPReceiver().start()
    try:
        node.triage("add-channel", "ris", "--kind", "hl7", "--host", "127.0.0.1", "--port", str(ris.port))
        node.triage("add-notify-rule", "everything", "--channels", "ris")
        node.start()
        first = node.end_job("covid")
        delivered(node, first, 1)
        ris.hold.set()  # the next message waits for its acknowledgement until the kill
        held = node.end_job("cap")
        wait_until(lambda: len(ris.received) == 2, 30, "the second message to arrive")
        node.kill()  # SIGKILL, listeners included, while serve waits for the acknowledgement
        queued = [node.end_job("covid") for _ in range(2)]  # ended while the node is down
        ris.release()
        node.start()
        for job_id in [held, *queued]:
            delivered(node, job_id, 1)
    finally:
        ris.stop()
    ids = {job_id: node.job(job_id)["notifications"][0] for job_id in [first, held, *queued]}
    assert all(n["status"] == "done" for n in ids.values()), ids
    assert ids[held]["attempts"] == 2 and ids[first]["attempts"] == 1
    # The held message came twice with the same MSH-10 (the receiver can drop the repeat); every
    # other message once; each acknowledged once.
    assert ris.repeats() == {ids[held]["message_id"]: 2}
    assert sorted(ris.acknowledged) == sorted(n["message_id"] for n in ids.values())
