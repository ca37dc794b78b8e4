"""The admins' read-only page of triage rules (/rules) through the admin app (uvicorn on a loopback
port, SQLite and PostgreSQL), as a browser-like client gets it.

Covers: priority rules, channels and notification rules made as ``dicom-node triage`` makes them
(dicom_node.triage.rules) listed with their conditions; a channel's secrets (webhook secret, SMTP
password, a token in a webhook URL's query or a password in it) never in the page; the latest
notifications with their state and the endpoint's answer; the navigation's link for admins only;
viewers and radiologists refused (403). Not covered: changing rules (the command line's, in
tests/triage).
"""

from __future__ import annotations

from typing import Any

import pytest

from dicom_node.db.models import Notification
from dicom_node.db.times import utcnow
from dicom_node.triage import rules
from dicom_node.triage.alerts import NotifyConditions
from dicom_node.triage.priority import PriorityConditions
from tests.admin.conftest import PASSWORD, RADIOLOGIST, VIEWER, AdminApp, finished_job

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "s3cret-s3cret-s3cret"
SMTP_PASSWORD = "smtp-pass-word"
URL_TOKEN = "T0KEN-in-the-query"


def configure(app: AdminApp) -> tuple[int, int]:
    """Rules and channels as the command line makes them, and two notifications of one job."""
    _, job_id, _ = finished_job(app)
    with app.db.session() as s:
        rules.add_priority_rule(
            s,
            rules.PriorityRuleIn(
                name="emergency",
                priority="stat",
                conditions=PriorityConditions(calling_ae=["ER_CT"]),
                description="the ED's CT",
            ),
        )
        rules.add_priority_rule(s, rules.PriorityRuleIn(name="night", priority="high", enabled=False))
        ris = rules.add_channel(
            s, rules.ChannelIn(name="ris", kind="hl7", settings={"host": "ris.example.org", "port": 2575})
        )
        hook = rules.add_channel(
            s,
            rules.ChannelIn(
                name="chat",
                kind="webhook",
                settings={"url": f"https://bot:pw@chat.example.org/hook?token={URL_TOKEN}", "secret": WEBHOOK_SECRET},
            ),
        )
        rules.add_channel(
            s,
            rules.ChannelIn(
                name="mail",
                kind="email",
                settings={
                    "host": "smtp.example.org",
                    "sender": "node@example.org",
                    "recipients": ["ct-reading@example.org"],
                    "username": "node",
                    "password": SMTP_PASSWORD,
                },
            ),
        )
        rules.add_notify_rule(
            s,
            rules.NotifyRuleIn(
                name="suspicious", channels=["ris", "chat"], conditions=NotifyConditions(decisions=["covid"])
            ),
        )
        common: dict[str, Any] = {"job_id": job_id, "rules": ["suspicious"], "created_at": utcnow()}
        done = Notification(
            channel_id=ris.id, key=f"{job_id}:0:{ris.id}", channel="ris", kind="hl7", message_id="m1",
            status="done", attempts=1, response="MSA AA m1", delivered_at=utcnow(), **common,
        )  # fmt: skip
        retrying = Notification(
            channel_id=hook.id, key=f"{job_id}:0:{hook.id}", channel="chat", kind="webhook", message_id="m2",
            status="retrying", attempts=3, last_error="HTTP 503 Service Unavailable", next_attempt_at=utcnow(),
            **common,
        )  # fmt: skip
        s.add_all([done, retrying])
        s.flush()
        return done.id, retrying.id


def test_admins_read_the_triage_rules_channels_and_deliveries(admin_app: AdminApp) -> None:
    done, retrying = configure(admin_app)
    browser = admin_app.browser()
    page = browser.get("/rules")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'href="/rules"' in html, "the navigation links the page"
    for text in (
        'data-name="emergency"',
        "calling_ae = ER_CT",
        "the ED&#39;s CT",
        'data-name="night"',
        "disabled",
        'data-name="ris"',
        "ris.example.org",
        "2575",
        'data-name="chat"',
        "https://bot:***@chat.example.org/hook?token=***",
        'data-name="mail"',
        "ct-reading@example.org",
        'data-name="suspicious"',
        "chat, ris",
        "decisions = covid",
        f'data-notification-id="{done}"',
        "MSA AA m1",
        f'data-notification-id="{retrying}"',
        "HTTP 503 Service Unavailable",
    ):
        assert text in html, text
    for secret in (WEBHOOK_SECRET, SMTP_PASSWORD, URL_TOKEN, "bot:pw@"):
        assert secret not in html, secret
    assert html.index(f'data-notification-id="{retrying}"') < html.index(f'data-notification-id="{done}"')


def test_the_page_is_for_admins_only(radiologist_app: tuple[AdminApp, str]) -> None:
    app, _ = radiologist_app
    for name in (VIEWER, RADIOLOGIST):
        browser = app.browser(name, PASSWORD)
        assert 'href="/rules"' not in browser.get("/worklist").text, name
        assert browser.get("/rules").status_code == 403, name
    empty = app.browser().get("/rules")
    assert empty.status_code == 200 and "None: every job is routine." in empty.text
