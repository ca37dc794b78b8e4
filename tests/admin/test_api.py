"""The admin REST API and the pages' access rules, over HTTP against the app served by uvicorn,
on SQLite and on PostgreSQL (each test runs on both).

Covers: 401 without credentials on every non-public route (taken from the OpenAPI document) and
the login redirect of pages; 403 for a viewer writing; each configuration route's happy path
with its audit entries (before and after); 422 naming the field for a 17-character AE title, a
backslash, an empty title, a port out of range (with the command line's reasons); tokens created,
used and revoked; session login with CSRF checks on form posts and on API writes, logout ending
the session on the server, login throttling; form errors shown at their field; series, jobs,
the heatmap preview, retry and re-export, an output kind left out shown on the job and its page;
/health and /metrics; the C-ECHO test against Orthanc;
the ``dicom-node admin`` commands and the audit of command-line changes.

Not covered here: the running listener picking changes up (test_live.py) and the pages in a real
browser (test_browser.py). The job rows here are written directly; the browser test makes its
finished job with the real worker.
"""

from __future__ import annotations

import io
import json
import re
import socket
import sys
from contextlib import closing
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from dicom_node.admin.auth import LoginThrottle
from dicom_node.cli import main
from dicom_node.configuration import cli_actor
from dicom_node.db.models import AuditEntry, Job, OutboxMessage, Source
from dicom_node.validation import check_ae_title, check_port
from tests.admin.conftest import ADMIN, PASSWORD, VIEWER, AdminApp, Browser, finished_job
from tests.harness.peers import Orthanc, free_port

PUBLIC = {"/health", "/metrics"}


def field_errors(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["msg"] for e in response.json()["detail"]}


def audit_rows(app: AdminApp, **where: Any) -> list[AuditEntry]:
    with app.db.session() as s:
        q = select(AuditEntry).order_by(AuditEntry.id)
        for key, value in where.items():
            q = q.where(getattr(AuditEntry, key) == value)
        return list(s.scalars(q))


# --- who may do what -----------------------------------------------------------------------


def test_every_route_needs_credentials_except_the_public_ones(admin_app: AdminApp) -> None:
    with admin_app.admin() as api:
        paths = api.get("/openapi.json").json()["paths"]
    assert {"/api/local-aes", "/api/sources", "/api/destinations", "/api/jobs", "/api/tokens", "/api/audit"} <= set(
        paths
    )
    checked = 0
    with admin_app.client() as anonymous, admin_app.client("dnt_not-a-token") as forged:
        for path, methods in paths.items():
            concrete = re.sub(r"\{[^}]+\}", "1", path)
            for method in methods:
                if path in PUBLIC:
                    continue
                for client in (anonymous, forged):
                    response = client.request(method.upper(), concrete)
                    assert response.status_code == 401, (method, path, response.status_code)
                    assert response.headers["www-authenticate"] == "Bearer"
                checked += 1
        assert checked > 20
        assert anonymous.get("/openapi.json").status_code == 401
        # Pages send people to the login form, keeping where they wanted to go.
        for page in ("/", "/series", "/jobs/1", "/local-aes", "/audit", "/tokens"):
            response = anonymous.get(page)
            assert response.status_code == 303 and response.headers["location"].startswith("/login?next="), page
        # Public without login.
        assert anonymous.get("/health").status_code in (200, 503)
        assert anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/login").status_code == 200
        assert anonymous.get("/static/admin.js").status_code == 200


def test_a_viewer_reads_but_may_not_write(admin_app: AdminApp) -> None:
    with admin_app.admin() as api:
        dest = api.post("/api/destinations", json={"title": "PACS", "host": "127.0.0.1", "port": 104}).json()
    _, job_id, _ = finished_job(admin_app)
    with admin_app.viewer() as viewer:
        assert viewer.get("/api/me").json() == {
            "name": VIEWER,
            "role": "viewer",
            "via": viewer.get("/api/me").json()["via"],
        }
        for path in (
            "/api/local-aes",
            "/api/sources",
            "/api/destinations",
            "/api/series",
            "/api/jobs",
            "/api/audit",
            "/api/events",
        ):
            assert viewer.get(path).status_code == 200, path
        refused = [
            viewer.post("/api/local-aes", json={"title": "NEW", "port": 11112}),
            viewer.post("/api/sources", json={"title": "CT1"}),
            viewer.patch(f"/api/destinations/{dest['id']}", json={"port": 105}),
            viewer.delete(f"/api/destinations/{dest['id']}"),
            viewer.post(f"/api/jobs/{job_id}/retry"),
            viewer.post(f"/api/jobs/{job_id}/export"),
            viewer.post("/api/tokens", json={"name": "mine"}),
            viewer.get("/api/tokens"),
            viewer.get("/api/users"),
        ]
        for response in refused:
            assert response.status_code == 403, (response.request.method, response.request.url, response.text)
            assert "only an admin" in response.json()["detail"]
    with admin_app.admin() as api:
        assert api.get(f"/api/destinations/{dest['id']}").json()["port"] == 104
    # The pages refuse the same way.
    browser = admin_app.browser(VIEWER)
    assert browser.get("/sources").status_code == 200
    assert browser.get("/sources/new").status_code == 403
    assert browser.post("/sources/new", {"title": "CT1"}).status_code == 403
    assert browser.get("/tokens").status_code == 403


# --- configuration ---------------------------------------------------------------------------


def test_local_ae_create_read_update_delete_with_audit(admin_app: AdminApp) -> None:
    with admin_app.admin() as api:
        assert (
            api.post("/api/destinations", json={"title": "PACS", "host": "pacs.example.org", "port": 104}).status_code
            == 201
        )
        created = api.post(
            "/api/local-aes",
            json={
                "title": "COVIDNODE",
                "port": 11112,
                "quiet_seconds": 3,
                "send_results_to": ["PACS"],
                "filters": {"min_slices": 20},
            },
        )
        assert created.status_code == 201, created.text
        ae = created.json()
        assert ae["title"] == "COVIDNODE" and ae["send_results_to"] == ["PACS"] and ae["filters"]["min_slices"] == 20
        assert api.get(f"/api/local-aes/{ae['id']}").json() == ae
        assert [a["title"] for a in api.get("/api/local-aes").json()] == ["COVIDNODE"]

        changed = api.patch(f"/api/local-aes/{ae['id']}", json={"quiet_seconds": 2.5, "enabled": False})
        assert changed.status_code == 200, changed.text
        assert changed.json()["quiet_seconds"] == 2.5 and changed.json()["enabled"] is False

        assert api.delete(f"/api/local-aes/{ae['id']}").status_code == 204
        assert api.get(f"/api/local-aes/{ae['id']}").status_code == 404
        assert api.patch(f"/api/local-aes/{ae['id']}", json={"port": 1}).status_code == 404

        log = api.get("/api/audit", params={"target_type": "local_ae"}).json()
    assert [e["action"] for e in log] == ["local_ae.delete", "local_ae.update", "local_ae.create"]
    delete, update, create = log
    assert all(e["actor"] == ADMIN and e["via"].startswith("api-token ") and e["target"] == "COVIDNODE" for e in log)
    assert create["before"] is None and create["after"]["quiet_seconds"] == 3.0
    assert update["before"]["quiet_seconds"] == 3.0 and update["after"]["quiet_seconds"] == 2.5
    assert sorted(update["changed"]) == ["enabled", "quiet_seconds"]
    assert delete["after"] is None and delete["before"]["enabled"] is False


def test_sources_and_destinations(admin_app: AdminApp) -> None:
    with admin_app.admin() as api:
        src = api.post("/api/sources", json={"title": "CT1", "host": "10.1.2.3", "port": 4242})
        assert src.status_code == 201, src.text
        src_id = src.json()["id"]
        any_host = api.patch(f"/api/sources/{src_id}", json={"host": None})
        assert any_host.status_code == 200 and any_host.json()["host"] is None
        assert field_errors(api.post("/api/sources", json={"title": "CT1"})) == {"title": "source 'CT1' exists already"}
        assert "host" in field_errors(api.post("/api/sources", json={"title": "CT2", "host": "bad host!"}))

        dest = api.post(
            "/api/destinations",
            json={"title": "PACS", "host": "10.0.0.9", "port": 11112, "tls": True, "outputs": ["sr", "sc"]},
        )
        assert dest.status_code == 201, dest.text
        dest_id = dest.json()["id"]
        assert dest.json()["outputs"] == ["sr", "sc"] and dest.json()["tls"] is True
        assert api.patch(f"/api/destinations/{dest_id}", json={"outputs": ["seg"]}).json()["outputs"] == ["seg"]
        assert "outputs" in field_errors(api.patch(f"/api/destinations/{dest_id}", json={"outputs": ["pdf"]}))
        assert "outputs" in field_errors(
            api.post("/api/destinations", json={"title": "P2", "host": "h", "port": 1, "outputs": ["sr", "sr"]})
        )
        assert field_errors(
            api.post("/api/local-aes", json={"title": "N", "port": 2000, "send_results_to": ["NOPE"]})
        ) == {"send_results_to": "no destination titled 'NOPE'"}
        assert api.delete(f"/api/sources/{src_id}").status_code == 204
        assert api.delete(f"/api/destinations/{dest_id}").status_code == 204
        assert api.get("/api/sources").json() == [] and api.get("/api/destinations").json() == []
    actions = [e.action for e in audit_rows(admin_app)]
    assert actions == [
        "source.create",
        "source.update",
        "destination.create",
        "destination.update",
        "source.delete",
        "destination.delete",
    ]


@pytest.mark.parametrize("route", ["/api/local-aes", "/api/sources", "/api/destinations"])
def test_refusals_name_the_field_with_the_command_lines_reason(admin_app: AdminApp, route: str) -> None:
    bases: dict[str, dict[str, Any]] = {
        "/api/local-aes": {"title": "NODE", "port": 11112},
        "/api/sources": {"title": "CT1"},
        "/api/destinations": {"title": "PACS", "host": "127.0.0.1", "port": 104},
    }
    base = bases[route]
    titles = ["A" * 17, "BAD\\TITLE", "", "   "]
    ports = [0, 70000, -1]
    with admin_app.admin() as api:
        for title in titles:
            errors = field_errors(api.post(route, json={**base, "title": title}))
            assert errors == {"title": check_ae_title(title)[1]}, title
        for port in ports:
            errors = field_errors(api.post(route, json={**base, "port": port}))
            assert errors == {"port": check_port(port)[1]}, port
        assert "17 characters" in field_errors(api.post(route, json={**base, "title": "A" * 17}))["title"]
        assert "title" in field_errors(api.post(route, json={k: v for k, v in base.items() if k != "title"}))
        assert "colour" in field_errors(api.post(route, json={**base, "colour": "red"}))
        # Changes are checked the same way.
        item = api.post(route, json=base)
        assert item.status_code == 201, item.text
        assert field_errors(api.patch(f"{route}/{item.json()['id']}", json={"title": "B" * 17})) == {
            "title": check_ae_title("B" * 17)[1]
        }
        assert field_errors(api.patch(f"{route}/{item.json()['id']}", json={"port": 65536})) == {
            "port": check_port(65536)[1]
        }
        assert len(api.get(route).json()) == 1


def test_form_errors_are_shown_at_their_field(admin_app: AdminApp) -> None:
    browser = admin_app.browser()
    browser.get("/local-aes/new")
    page = browser.post(
        "/local-aes/new",
        {
            "title": "A" * 17,
            "port": "70000",
            "quiet_seconds": "5",
            "max_wait_seconds": "1800",
            "filters.min_slices": "1",
        },
    )
    assert page.status_code == 422
    html = page.text
    assert re.search(r'id="error-title"[^>]*>is 17 characters long, at most 16 are allowed<', html)
    assert re.search(r'id="error-port"[^>]*>70000 is out of range 1-65535<', html)
    assert 'value="AAAAAAAAAAAAAAAAA"' in html  # what was typed stays in the form
    page = browser.post("/sources/new", {"title": "BAD\\AE", "port": "abc", "enabled": "on"})
    assert re.search(r'id="error-title"[^>]*>must not contain a backslash<', page.text)
    assert re.search(r'id="error-port"[^>]*>Input should be a valid integer', page.text)
    ok = browser.post("/sources/new", {"title": "CT1", "host": "", "port": "", "enabled": "on"})
    assert ok.status_code == 303 and ok.headers["location"] == "/sources"
    listing = browser.get("/sources")
    assert "Source CT1 added." in listing.text and 'data-title="CT1"' in listing.text
    with admin_app.admin() as api:
        assert api.get("/api/sources").json()[0] | {"id": 0} == {
            "id": 0,
            "title": "CT1",
            "host": None,
            "port": None,
            "enabled": True,
            "description": "",
        }
    entry = audit_rows(admin_app, action="source.create")[0]
    assert (entry.actor, entry.via) == (ADMIN, "web")


# --- tokens, sessions, CSRF ----------------------------------------------------------------


def test_tokens_are_created_shown_once_used_and_revoked(admin_app: AdminApp) -> None:
    with admin_app.admin() as api:
        made = api.post("/api/tokens", json={"name": "monitoring", "user": VIEWER})
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        assert token.startswith("dnt_") and made.json()["role"] == "viewer"
        listed = api.get("/api/tokens").json()
        assert token not in str(listed) and all("token" not in t and "token_hash" not in t for t in listed)
        with admin_app.client(token) as script:
            assert script.get("/api/me").json()["name"] == VIEWER
            assert api.delete(f"/api/tokens/{made.json()['id']}").json()["revoked_at"] is not None
            refused = script.get("/api/me")
            assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
        assert field_errors(api.post("/api/tokens", json={"name": "x", "user": "nobody"})) == {
            "user": "no user named 'nobody'"
        }
        assert api.delete("/api/tokens/9999").status_code == 404
    with admin_app.db.session() as s:
        stored = s.scalars(select(AuditEntry.action).where(AuditEntry.target_type == "token")).all()
    assert stored == ["token.create", "token.revoke"]


def test_session_login_csrf_and_logout(admin_app: AdminApp) -> None:
    browser = Browser(admin_app.client())
    login_page = browser.get("/login")
    assert login_page.status_code == 200 and browser.csrf
    cookie = login_page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert browser.post("/login", {"name": ADMIN, "password": PASSWORD}, csrf=False).status_code == 403
    wrong = browser.post("/login", {"name": ADMIN, "password": "not the password"})
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    ok = browser.post("/login", {"name": ADMIN, "password": PASSWORD, "next": "/sources"})
    assert ok.status_code == 303 and ok.headers["location"] == "/sources"
    assert browser.get("/sources").status_code == 200

    # A form post without its CSRF token fails and changes nothing; with it, it works.
    refused = browser.post("/sources/new", {"title": "CT1", "enabled": "on"}, csrf=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    forged = browser.http.post("/sources/new", data={"title": "CT1", "csrf_token": "forged"})
    assert forged.status_code == 403
    with admin_app.db.session() as s:
        assert s.scalars(select(Source)).all() == []
    assert browser.post("/sources/new", {"title": "CT1", "enabled": "on"}).status_code == 303

    # The logged-in browser may read the API; writing needs the CSRF token in a header.
    assert browser.http.get("/api/sources").status_code == 200
    assert browser.http.post("/api/sources", json={"title": "CT2"}).status_code == 403
    assert (
        browser.http.post("/api/sources", json={"title": "CT2"}, headers={"X-CSRF-Token": browser.csrf}).status_code
        == 201
    )

    # Logging out ends the session on the server: the old cookie no longer logs in.
    old_cookies = dict(browser.http.cookies)
    assert browser.post("/logout").status_code == 303
    with admin_app.client() as replay:
        replay.cookies.update(old_cookies)
        assert replay.get("/sources").status_code == 303
        assert replay.get("/api/sources").status_code == 401
    actions = [e.action for e in audit_rows(admin_app, target_type="session")]
    assert actions == ["session.login_failed", "session.login", "session.logout"]


def test_wrong_passwords_lock_the_name_for_a_while(admin_app: AdminApp) -> None:
    browser = Browser(admin_app.client())
    browser.get("/login")
    for _ in range(5):
        assert browser.post("/login", {"name": ADMIN, "password": "guess guess guess"}).status_code == 401
    locked = browser.post("/login", {"name": ADMIN, "password": PASSWORD})
    assert locked.status_code == 429 and "Too many wrong passwords" in locked.text
    # Counted in the database: any admin app sharing it sees the same lock.
    with admin_app.db.session() as s:
        assert LoginThrottle().locked(s, ADMIN.upper(), "127.0.0.1") > 0
        assert LoginThrottle().locked(s, ADMIN, "127.0.0.2") == 0
    # The same name from another address is not locked out (nobody can lock an admin out from
    # elsewhere), nor is another name from this address.
    elsewhere = Browser(
        httpx.Client(base_url=admin_app.url, timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    )
    elsewhere.get("/login")
    assert elsewhere.post("/login", {"name": ADMIN, "password": PASSWORD}).status_code == 303
    assert browser.post("/login", {"name": VIEWER, "password": PASSWORD}).status_code == 303


# --- series, jobs, preview -----------------------------------------------------------------


def test_series_jobs_preview_retry_and_resend(admin_app: AdminApp) -> None:
    series_id, job_id, rgb = finished_job(admin_app)
    with admin_app.viewer() as viewer:
        series = viewer.get("/api/series").json()
        assert [(s["id"], s["status"], s["job_id"], s["decision"]) for s in series] == [
            (series_id, "done", job_id, "covid")
        ]
        assert viewer.get("/api/series", params={"status": "failed"}).json() == []
        assert viewer.get(f"/api/series/{series_id}").json()["jobs"][0]["id"] == job_id
        job = viewer.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "done" and job["probabilities"]["covid"] == 0.8 and job["timings"]["inference"] == 2.5
        assert job["exports"][0]["destination"] == "PACS" and job["exports"][0]["status"] == "done"
        assert job["output_counts"]["sc"] == 1 and job["notice"] == "Not for clinical use."
        assert [j["id"] for j in viewer.get("/api/jobs", params={"status": "done"}).json()] == [job_id]

        png = viewer.get(f"/api/jobs/{job_id}/preview")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")), rgb)
        assert viewer.get(f"/api/jobs/{job_id}/preview", params={"index": 1}).status_code == 404
        assert viewer.get("/api/jobs/999").status_code == 404
        assert viewer.get("/api/series/999").status_code == 404

    with admin_app.admin() as api:
        resent = api.post(f"/api/jobs/{job_id}/export")
        assert resent.status_code == 202, resent.text
        assert api.get(f"/api/jobs/{job_id}").json()["exports"][0]["status"] == "pending"
        retried = api.post(f"/api/jobs/{job_id}/retry")
        assert retried.status_code == 202 and retried.json()["status"] == "pending"
        again = api.post(f"/api/jobs/{job_id}/retry")
        assert again.status_code == 409 and "pending" in again.json()["detail"]
        assert api.post(f"/api/jobs/{job_id}/export").status_code == 409  # only a done job's results
        assert api.post("/api/jobs/999/retry").status_code == 404
    with admin_app.db.session() as s:
        topics = s.scalars(
            select(OutboxMessage.topic).where(OutboxMessage.job_id == job_id).order_by(OutboxMessage.id)
        ).all()
    assert topics == ["export", "analyse"]
    retry = audit_rows(admin_app, action="job.retry")[0]
    assert (
        retry.before == {"status": "done", "reason": ""}
        and retry.after is not None
        and retry.after["status"] == "pending"
    )

    # The job's page shows the preview with the notice.
    browser = admin_app.browser(VIEWER)
    page = browser.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    assert "Not for clinical use." in page.text and f"/api/jobs/{job_id}/preview?index=0" in page.text
    assert browser.http.get(f"/api/jobs/{job_id}/preview").status_code == 200  # the <img> loads with the session


def test_an_output_left_out_is_said_on_the_job_and_its_page(admin_app: AdminApp) -> None:
    _, job_id, _ = finished_job(admin_app)
    why = "parametric map left out: 1000 slices, over worker.parametric_map_max_slices = 600"
    with admin_app.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.result = {**(job.result or {}), "left_out": {"pm": why}}
    with admin_app.viewer() as viewer:
        assert viewer.get(f"/api/jobs/{job_id}").json()["left_out"] == {"pm": why}
    page = admin_app.browser(VIEWER).get(f"/jobs/{job_id}").text
    assert f'<tr class="left-out" data-kind="pm"><td>pm</td><td colspan="2" class="muted">{why}</td></tr>' in page


# --- health, metrics, OpenAPI, pages -------------------------------------------------------


def test_health_and_metrics(admin_app: AdminApp) -> None:
    port = free_port()
    with admin_app.admin() as api:
        assert api.post("/api/local-aes", json={"title": "NODE", "port": port}).status_code == 201
    with admin_app.client() as anonymous:
        down = anonymous.get("/health")
        assert down.status_code == 503
        checks = down.json()["checks"]
        assert checks["database"]["ok"] and checks["broker"]["ok"] and checks["disk"]["ok"]
        assert checks["listeners"]["aes"] == [
            {"title": "NODE", "port": port, "ok": False, "error": "Connection refused"}
        ]
        with closing(socket.socket()) as listener:
            listener.bind(("127.0.0.1", port))
            listener.listen()
            up = anonymous.get("/health")
            assert up.status_code == 200 and up.json()["status"] == "ok", up.text

        _, job_id, _ = finished_job(admin_app)
        text = anonymous.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    # Counted on the series (20 instances in finished_job's), so a purge by retention keeps the count.
    assert samples[("dicom_node_instances_received_total", ())] == 20
    assert samples[("dicom_node_series_completed_total", ())] == 1
    assert samples[("dicom_node_jobs", (("state", "done"),))] == 1
    assert samples[("dicom_node_jobs", (("state", "failed"),))] == 0
    assert samples[("dicom_node_queue_depth", ())] == 0
    assert samples[("dicom_node_inference_seconds_count", ())] == 1
    assert samples[("dicom_node_inference_seconds_sum", ())] == 2.5
    assert samples[("dicom_node_inference_seconds_bucket", (("le", "5.0"),))] == 1
    assert samples[("dicom_node_inference_seconds_bucket", (("le", "2.5"),))] == 1
    assert samples[("dicom_node_inference_seconds_bucket", (("le", "1.0"),))] == 0
    assert samples[("dicom_node_export_seconds_count", ())] == 1
    assert ("dicom_node_export_failures_total", (("destination", "PACS"),)) not in samples
    assert any(name == "dicom_node_admin_requests_total" for name, _ in samples)
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)


def test_openapi_and_every_page_renders(admin_app: AdminApp) -> None:
    series_id, job_id, _ = finished_job(admin_app)
    with admin_app.admin() as api:
        schema = api.get("/openapi.json").json()
        assert schema["info"]["title"] == "COVID-CT AI node admin"
        assert "LocalAEIn" in schema["components"]["schemas"]
        dest = api.post("/api/destinations", json={"title": "PACS", "host": "127.0.0.1", "port": 104}).json()
        ae = api.post("/api/local-aes", json={"title": "NODE", "port": free_port(), "send_results_to": ["PACS"]}).json()
        src = api.post("/api/sources", json={"title": "CT1"}).json()
    browser = admin_app.browser()
    pages = [
        "/",
        "/series",
        "/series/rows",
        f"/series/{series_id}",
        "/jobs",
        "/jobs/rows",
        f"/jobs/{job_id}",
        "/local-aes",
        "/local-aes/new",
        f"/local-aes/{ae['id']}",
        f"/local-aes/{ae['id']}/delete",
        "/sources",
        "/sources/new",
        f"/sources/{src['id']}",
        "/destinations",
        f"/destinations/{dest['id']}",
        "/audit",
        "/audit?target_type=local_ae",
        "/tokens",
        "/tokens/1/revoke",
    ]
    for page in pages:
        response = browser.get(page)
        assert response.status_code == 200, (page, response.text[:500])
        assert (
            "script-src 'self'" in response.headers["content-security-policy"]
            and response.headers["x-frame-options"] == "DENY"
        )
        assert " on" + "change=" not in response.text and "javascript:" not in response.text  # no inline script
    for page in ("/series", "/jobs", f"/jobs/{job_id}", f"/series/{series_id}"):
        assert "Not for clinical use." in browser.get(page).text, page
    assert browser.get("/jobs/999").status_code == 404
    assert browser.get("/local-aes/999").status_code == 404


@pytest.mark.services  # Orthanc
def test_c_echo_of_a_destination(admin_app: AdminApp, tmp_path: Any) -> None:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    try:
        with admin_app.admin() as api:
            good = api.post(
                "/api/destinations", json={"title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
            ).json()
            wrong_title = api.post(
                "/api/destinations", json={"title": "NOTORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
            ).json()
            nobody = api.post(
                "/api/destinations", json={"title": "NOBODY", "host": "127.0.0.1", "port": free_port()}
            ).json()
        with admin_app.viewer() as viewer:
            answer = viewer.post(f"/api/destinations/{good['id']}/echo").json()
            assert answer["ok"] and answer["status"] == "0x0000" and answer["outcome"] == "Success", answer
            assert (
                answer["round_trip_ms"] > 0 and answer["calling_ae_title"] == admin_app.settings.export.calling_ae_title
            )
            rejected = viewer.post(f"/api/destinations/{wrong_title['id']}/echo").json()
            assert not rejected["ok"] and rejected["outcome"] == "association rejected", rejected
            silent = viewer.post(f"/api/destinations/{nobody['id']}/echo").json()
            assert not silent["ok"] and silent["outcome"] == "no association", silent
            assert viewer.post("/api/destinations/999/echo").status_code == 404
    finally:
        orthanc.stop()


@pytest.mark.services  # Orthanc
def test_a_dicomweb_destination_its_form_and_its_test(admin_app: AdminApp, tmp_path: Any) -> None:
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, users={"node": "right-password"}).start()
    url = orthanc.dicomweb_url
    try:
        with admin_app.admin() as api:
            web = {"title": "WEB", "kind": "dicomweb", "url": url, "auth": "basic", "username": "node"}
            assert field_errors(api.post("/api/destinations", json={**web, "url": "ftp://pacs/dw"})) == {
                "url": "'ftp://pacs/dw' must start with http:// or https://"
            }
            assert field_errors(api.post("/api/destinations", json=web)) == {
                "password": "is required for basic authentication"
            }
            made = api.post("/api/destinations", json={**web, "password": "wrong-password"})
            assert made.status_code == 201, made.text
            dest = made.json()
            assert (dest["host"], dest["port"], dest["url"]) == ("127.0.0.1", orthanc.http_port, url)
            assert "password" not in dest and "wrong-password" not in made.text
        browser = admin_app.browser()
        page = browser.get(f"/destinations/{dest['id']}")
        assert 'name="url"' in page.text and 'type="password"' in page.text and "wrong-password" not in page.text
        assert "QIDO-RS search at " + url in page.text
        refused = browser.post(f"/destinations/{dest['id']}/echo")
        assert 'id="echo-result"' in refused.text and "HTTP 401" in refused.text
        # The form saved with an empty password keeps the saved one; a new one replaces it.
        form = {**web, "token": "", "verify_tls": "on", "ca_file": "", "outputs": "sr", "enabled": "on"}
        assert browser.post(f"/destinations/{dest['id']}", {**form, "password": ""}).status_code == 303
        with admin_app.viewer() as viewer:
            assert not viewer.post(f"/api/destinations/{dest['id']}/echo").json()["ok"]
        assert browser.post(f"/destinations/{dest['id']}", {**form, "password": "right-password"}).status_code == 303
        with admin_app.viewer() as viewer:
            answer = viewer.post(f"/api/destinations/{dest['id']}/echo").json()
        assert answer["ok"] and answer["status"] == "200" and answer["url"] == url, answer
        page = browser.get(f"/destinations/{dest['id']}")
        assert "right-password" not in page.text
        with admin_app.admin() as api:
            log = api.get("/api/audit", params={"target_type": "destination"})
        # The password's change is in the audit log as a changed fingerprint, never the password.
        assert "password" in log.json()[0]["changed"] and "right-password" not in log.text, log.json()[0]
        assert "wrong-password" not in log.text
    finally:
        orthanc.stop()


# --- the command line ----------------------------------------------------------------------


def test_admin_commands_and_the_audit_of_command_line_changes(
    admin_app: AdminApp, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(admin_app.settings.data_dir))
    monkeypatch.setenv("DICOM_NODE_DATABASE_URL", admin_app.settings.effective_database_url)

    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["admin", "create-user", "carol", "--role", "viewer", "--password-stdin"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["admin", "create-user", "dave", "--role", "admin", "--password-stdin"]) == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["admin", "create-user", "carol", "--role", "admin", "--password-stdin"]) == 2
    assert "exists already" in capsys.readouterr().err

    assert main(["admin", "create-token", "carol", "--name", "nightly report"]) == 0
    token = capsys.readouterr().out.strip()
    with admin_app.client(token) as script:
        assert script.get("/api/me").json() == {
            "name": "carol",
            "role": "viewer",
            "via": script.get("/api/me").json()["via"],
        }
        token_id = int(script.get("/api/me").json()["via"].split()[-1])
        assert main(["admin", "revoke-token", str(token_id)]) == 0
        assert script.get("/api/me").status_code == 401
    assert capsys.readouterr().out.strip() == f"token {token_id} revoked"

    assert main(["admin", "list-users", "--json"]) == 0
    assert {u["name"] for u in json.loads(capsys.readouterr().out)} == {ADMIN, VIEWER, "carol"}
    assert main(["ae", "add-source", "CT9", "--host", "10.0.0.7"]) == 0
    capsys.readouterr()
    browser = admin_app.browser("carol")
    assert "source.create" in browser.get("/audit").text

    actor = cli_actor()
    rows = [(e.actor, e.via, e.action, e.target) for e in audit_rows(admin_app, via="cli")]
    assert rows == [
        (actor, "cli", "user.create", "carol"),
        (actor, "cli", "token.create", "nightly report (carol)"),
        (actor, "cli", "token.revoke", "nightly report (carol)"),
        (actor, "cli", "source.create", "CT9"),
    ]
