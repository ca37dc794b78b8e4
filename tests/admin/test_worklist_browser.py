"""The triage worklist in headless Chromium, as a radiologist reads it (the admin app over SQLite
and PostgreSQL, the browser fixture and Pages of tests/admin/conftest.py).

Covers: logging in as a ``radiologist``; a running STAT job finishing and its result appearing in
the list without a reload; the order (the STAT study above a more suspicious routine one, that one
above a less suspicious one); the heatmap picture loading; the "Open in viewer" link built from
``triage.viewer_url`` (its identifiers URL-quoted); a verdict that disagrees (true class and
comment) and one that agrees, given in the row's form, shown on the page and in the REST API; the
radiologist refused (403) on an admin page and on the API from the same browser session. Cells
are found by their column's header.

The jobs are written to the database as the worker leaves them (conftest.study, finished_job):
the pipeline itself is test_browser.py's. Not covered: the filters and the monitoring page
(test_worklist.py, through the API and the pages' HTML).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select

from dicom_node.db.models import Job, Series
from dicom_node.db.times import utcnow
from dicom_node.jobs.states import JobStatus
from dicom_node.triage.priority import Priority
from tests.admin.conftest import PASSWORD, RADIOLOGIST, AdminApp, Pages, study

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROWS = "#worklist-rows"
VIEWER = "http://viewer.test/viewer?StudyInstanceUIDs={study_uid}&accession={accession_number}"


def row(job_id: int) -> str:
    return f"{ROWS} tr[data-job-id='{job_id}']"


def give_verdict(p: Pages, job_id: int, verdict: str, true_class: str, comment: str) -> None:
    """Fill in the row's verdict form and send it. The list stops refreshing once a field of it
    is touched; the values are read back before sending in case the rows were replaced first."""
    for _ in range(5):
        r = p.wait(EC.presence_of_element_located((By.CSS_SELECTOR, row(job_id))))
        Select(r.find_element(By.NAME, "verdict")).select_by_value(verdict)
        Select(r.find_element(By.NAME, "true_class")).select_by_value(true_class)
        box = r.find_element(By.NAME, "comment")
        box.clear()
        box.send_keys(comment)
        filled = p.driver.execute_script(
            "const f = document.querySelector(arguments[0] + ' form.verdict-form');"
            " return f ? [f.verdict.value, f.true_class.value, f.comment.value] : null;",
            row(job_id),
        )
        if filled == [verdict, true_class, comment]:
            r.find_element(By.CSS_SELECTOR, "form.verdict-form button[type='submit']").click()
            return
    raise AssertionError(f"the verdict form of job {job_id} lost what was typed: {filled}")


def fetch_status(driver: WebDriver, path: str) -> Any:
    """The HTTP status of a GET from the page's own session (its cookie)."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        " fetch(arguments[0], {credentials: 'same-origin'}).then(r => done(r.status), e => done(String(e)));",
        path,
    )


def test_a_radiologist_reads_the_worklist_in_chromium(
    radiologist_app: tuple[AdminApp, str], browser: WebDriver
) -> None:
    app, token = radiologist_app
    app.settings.triage.viewer_url = VIEWER
    calm = study(app, "calm", priority=Priority.ROUTINE, p_normal=0.6, minutes_ago=30, decision="normal")
    suspicious = study(app, "suspicious", priority=Priority.ROUTINE, p_normal=0.1, minutes_ago=5)
    # The emergency department's study: STAT, less suspicious than the routine one, still running.
    stat = study(app, "er&1", priority=Priority.STAT, p_normal=0.3, minutes_ago=1)
    with app.db.session() as s:
        job = s.get(Job, stat)
        assert job is not None
        decision, result, outputs = job.decision, job.result, job.outputs
        job.status, job.finished_at = JobStatus.RUNNING.value, None
        job.decision, job.result, job.outputs = "", None, []
        series = s.get(Series, job.series_id)
        assert series is not None
        study_uid, accession = series.study_uid, series.accession_number
    p = Pages(browser, app.url)

    # Log in as the radiologist: the worklist, the STAT job still running at its top.
    p.open("/worklist")
    p.wait(EC.url_contains("/login?next="))
    p.fill({"name": RADIOLOGIST, "password": PASSWORD})
    p.by_id("login").click()
    p.wait(EC.url_to_be(app.url + "/worklist"))
    assert p.by_id("who").text.split() == [RADIOLOGIST, "radiologist"]
    p.wait(lambda d: (c := p.column(row(stat), "AI result")) and c["text"] == "running")
    browser.execute_script("window.notReloaded = true;")

    # The job finishes (as the worker ends it): its result comes in by itself.
    with app.db.session() as s:
        job = s.get(Job, stat)
        assert job is not None
        job.status, job.finished_at = JobStatus.DONE.value, utcnow()
        job.decision, job.result, job.outputs = decision, result, outputs
    p.wait(lambda d: (c := p.column(row(stat), "AI result")) and c["text"] == "covid", 20)
    assert browser.execute_script("return window.notReloaded === true;")
    assert (p.column(row(stat), "p(covid)") or {})["text"] == "0.35 / 0.35 / 0.30"
    assert (p.column(row(stat), "Priority") or {})["text"] == "stat"
    p.shot("worklist-01-stat-finished")

    # Most urgent first: STAT, then the more suspicious routine study, then the calmer one.
    assert p.rows(ROWS, "data-job-id") == [str(stat), str(suspicious), str(calm)]
    assert [(p.column(row(j), "Priority") or {})["text"] for j in (stat, suspicious, calm)] == [
        "stat",
        "routine",
        "routine",
    ]
    picture = browser.find_element(By.CSS_SELECTOR, f"{row(stat)} img.thumb")
    browser.execute_script("arguments[0].scrollIntoView();", picture)
    p.wait(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", picture))

    # The viewer link: the site's template with the study's identifiers, quoted.
    viewer = p.column(row(stat), "Viewer")
    assert accession == "ACC-er&1"
    expected = VIEWER.format(study_uid=study_uid, accession_number="ACC-er%261")
    assert viewer == {"text": "Open in viewer", "links": [expected]}, viewer
    assert expected == VIEWER.format(study_uid=quote(study_uid, safe=""), accession_number=quote(accession, safe=""))

    # Verdicts: disagree (it is CAP) with a comment, then agree with the STAT one.
    give_verdict(p, suspicious, "disagree", "cap", "lobar consolidation, right lower lobe")
    p.wait(EC.text_to_be_present_in_element((By.ID, "flash"), f"Verdict on job {suspicious} saved: disagree."))
    assert p.rows(ROWS, "data-job-id") == [str(stat), str(calm)], "a study with a verdict is no longer open"
    give_verdict(p, stat, "agree", "", "called the ED")
    p.wait(EC.text_to_be_present_in_element((By.ID, "flash"), f"Verdict on job {stat} saved: agree."))
    Select(p.by_id("show")).select_by_value("all")
    p.wait(EC.url_contains("show=all"))
    review = (p.column(row(suspicious), "Review") or {})["text"]
    assert review.startswith(f"disagree: cap {RADIOLOGIST}") and "lobar consolidation" in review, review
    p.shot("worklist-02-verdicts")
    with app.client(token) as http:
        reviews = {r["id"]: r["review"] for r in http.get("/api/worklist", params={"show": "all"}).json()}
    assert {k: reviews[suspicious][k] for k in ("verdict", "true_class", "comment", "verdict_by")} == {
        "verdict": "disagree",
        "true_class": "cap",
        "comment": "lobar consolidation, right lower lobe",
        "verdict_by": RADIOLOGIST,
    }
    assert (reviews[stat]["verdict"], reviews[stat]["true_class"], reviews[stat]["comment"]) == (
        "agree",
        "covid",
        "called the ED",
    )
    assert reviews[calm]["verdict"] == "" and reviews[calm]["acknowledged_at"] is None

    # Nothing of the admin's: neither its pages nor its API, from this same session.
    assert not browser.find_elements(By.CSS_SELECTOR, "nav a[href='/sources']")
    p.open("/sources")
    assert p.by_id("error-message").text == f"{RADIOLOGIST} is a radiologist: the worklist is at /worklist"
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"
    p.shot("worklist-03-sources-refused")
    assert fetch_status(browser, "/sources") == 403
    assert fetch_status(browser, "/api/sources") == 403
    assert fetch_status(browser, "/api/jobs") == 403
    assert fetch_status(browser, "/api/worklist") == 200
