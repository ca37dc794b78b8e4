"""The triage worklist, reviews and monitoring through the admin app (uvicorn on a loopback port,
SQLite and PostgreSQL): the REST API, the pages a browser-like client gets, the radiologist role.

Covers: the order (priority, then suspicion, then the oldest last image), the filters (decision,
priority, dates, acknowledged or not), the viewer link from ``triage.viewer_url``, the heatmap
picture; acknowledging and verdicts (stored, audited, refused without a true class when
disagreeing, refused to a viewer); a radiologist reaching the worklist and its monitoring and
nothing else (pages and API answer 403; / leads to the worklist); the confusion table, PPV and
agreement from verdicts, the warning event when agreement falls below the setting, the charts as
PNG and the Prometheus metrics. Not covered: a browser's refresh of the rows and its forms
(test_worklist_browser.py).
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from dicom_node.db.models import AuditEntry, Event, Job
from dicom_node.jobs.states import JobStatus
from dicom_node.triage import monitoring
from dicom_node.triage.priority import Priority
from tests.admin.conftest import PASSWORD, RADIOLOGIST, VIEWER_URL, AdminApp, study

pytestmark = pytest.mark.integration


def test_order_filters_link_and_picture(radiologist_app: tuple[AdminApp, str]) -> None:
    admin_app, token = radiologist_app
    routine_old = study(admin_app, "r-old", priority=Priority.ROUTINE, p_normal=0.4, minutes_ago=50)
    routine_suspicious = study(admin_app, "r-sus", priority=Priority.ROUTINE, p_normal=0.1, minutes_ago=5)
    routine_same = study(admin_app, "r-same", priority=Priority.ROUTINE, p_normal=0.4, minutes_ago=10)
    stat = study(admin_app, "stat", priority=Priority.STAT, p_normal=0.9, minutes_ago=1, decision="normal")
    with admin_app.client(token) as http:
        rows = http.get("/api/worklist").json()
        assert [r["id"] for r in rows] == [stat, routine_suspicious, routine_old, routine_same]
        top = rows[0]
        assert top["viewer_url"] == VIEWER_URL.format(study_uid=top["study_uid"])
        assert top["suspicion"] == pytest.approx(0.1) and 55 <= top["waiting_seconds"] <= 300
        assert [r["id"] for r in http.get("/api/worklist", params={"decision": "normal"}).json()] == [stat]
        assert [r["id"] for r in http.get("/api/worklist", params={"priority": "stat"}).json()] == [stat]
        # A day no later than the oldest study's (50 minutes ago: yesterday, shortly after midnight)
        first_day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=60)).date()
        assert len(http.get("/api/worklist", params={"since": first_day.isoformat()}).json()) == 4
        assert http.get("/api/worklist", params={"until": (first_day - dt.timedelta(days=1)).isoformat()}).json() == []
        picture = http.get(f"/worklist/{stat}/picture")
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
        page = http.get("/worklist")
        assert page.status_code == 200 and f'data-job-id="{stat}"' in page.text and "Open in viewer" in page.text
        assert page.text.index(f'data-job-id="{stat}"') < page.text.index(f'data-job-id="{routine_old}"')


def test_reviews_are_stored_audited_and_refused_when_incomplete(radiologist_app: tuple[AdminApp, str]) -> None:
    admin_app, token = radiologist_app
    one = study(admin_app, "one", priority=Priority.HIGH, p_normal=0.2, minutes_ago=3)
    two = study(admin_app, "two", priority=Priority.ROUTINE, p_normal=0.2, minutes_ago=3)
    with admin_app.client(token) as http, admin_app.viewer() as viewer:
        assert viewer.post(f"/api/worklist/{one}/acknowledge").status_code == 403
        acked = http.post(f"/api/worklist/{one}/acknowledge").json()
        assert acked["acknowledged_by"] == RADIOLOGIST
        assert [r["id"] for r in http.get("/api/worklist").json()] == [two]
        assert [r["id"] for r in http.get("/api/worklist", params={"show": "acknowledged"}).json()] == [one]
        missing = http.put(f"/api/worklist/{two}/verdict", json={"verdict": "disagree"})
        assert missing.status_code == 422 and "true_class" in missing.text
        saved = http.put(
            f"/api/worklist/{two}/verdict", json={"verdict": "disagree", "true_class": "cap", "comment": "lobar"}
        ).json()
        assert (saved["verdict"], saved["true_class"], saved["comment"]) == ("disagree", "cap", "lobar")
        agreed = http.put(f"/api/worklist/{one}/verdict", json={"verdict": "agree"}).json()
        assert agreed["true_class"] == "covid", "agreeing takes the node's decision as the true class"
        all_rows = {r["id"]: r for r in http.get("/api/worklist", params={"show": "all"}).json()}
        assert all_rows[two]["review"]["verdict_by"] == RADIOLOGIST
    with admin_app.db.session() as s:
        trail = [
            (a.action, a.target_id, a.actor)
            for a in s.scalars(select(AuditEntry).where(AuditEntry.action.like("review.%")).order_by(AuditEntry.id))
        ]
    assert trail == [
        ("review.acknowledge", str(one), RADIOLOGIST),
        ("review.verdict", str(two), RADIOLOGIST),
        ("review.verdict", str(one), RADIOLOGIST),
    ]


def test_a_radiologist_reaches_the_worklist_and_nothing_else(radiologist_app: tuple[AdminApp, str]) -> None:
    admin_app, token = radiologist_app
    with admin_app.client(token) as http:
        assert http.get("/api/worklist").status_code == 200
        assert http.get("/api/triage/stats").status_code == 200
        for path in ("/api/jobs", "/api/series", "/api/local-aes", "/api/users", "/api/audit", "/openapi.json"):
            assert http.get(path).status_code == 403, path
    browser = admin_app.browser(RADIOLOGIST, PASSWORD)
    assert browser.get("/worklist").status_code == 200
    assert browser.get("/triage").status_code == 200
    assert browser.http.get("/").headers["location"] == "/worklist"
    for path in ("/jobs", "/series", "/local-aes", "/users", "/tokens", "/audit"):
        denied = browser.get(path)
        assert denied.status_code == 403 and "radiologist" in denied.text, path
        assert 'href="/users"' not in denied.text


def test_agreement_ppv_charts_metrics_and_the_warning(radiologist_app: tuple[AdminApp, str]) -> None:
    admin_app, token = radiologist_app
    admin_app.settings.triage.agreement_min_verdicts = 3
    admin_app.settings.triage.agreement_warning_below = 0.6
    ids = [study(admin_app, f"m{n}", priority=Priority.ROUTINE, p_normal=0.2, minutes_ago=2) for n in range(4)]
    verdicts = [
        {"verdict": "agree"},
        {"verdict": "disagree", "true_class": "normal"},
        {"verdict": "disagree", "true_class": "cap"},
        {"verdict": "agree"},
    ]
    with admin_app.client(token) as http:
        for job_id, body in zip(ids, verdicts[:3]):
            assert http.put(f"/api/worklist/{job_id}/verdict", json=body).status_code == 200
        with admin_app.db.session() as s:
            events = [(e.level, e.message) for e in s.scalars(select(Event).where(Event.category == "triage"))]
        assert len(events) == 1 and events[0][0] == "warning" and "33%" in events[0][1], events
        http.put(f"/api/worklist/{ids[3]}/verdict", json=verdicts[3])
        stats = http.get("/api/triage/stats").json()
        for name in monitoring.CHARTS:
            png = http.get(f"/triage/charts/{name}.png")
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), name
    overall = stats["overall"]
    assert overall["verdicts"] == 4 and overall["agreement"] == pytest.approx(0.5)
    assert overall["confusion"]["covid"] == {"covid": 2, "cap": 1, "normal": 1}
    assert overall["ppv"]["covid"] == pytest.approx(0.5) and overall["ppv"]["cap"] is None
    assert len(stats["weeks"]) == 1
    assert stats["waiting"]["routine"]["unread"] == 0
    metrics = admin_app.client().get("/metrics").text
    assert "dicom_node_triage_agreement_ratio 0.5" in metrics
    assert 'dicom_node_triage_ppv_ratio{decision="covid"} 0.5' in metrics
    assert 'dicom_node_triage_waiting{priority="stat",stage="unread"} 0.0' in metrics
    with admin_app.db.session() as s:
        job = s.get(Job, ids[0])
        assert job is not None and job.status == JobStatus.DONE.value
