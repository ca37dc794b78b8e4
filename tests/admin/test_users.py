"""User management in the admin pages (dicom_node.admin.pages.users, dicom_node.admin.users): an
admin adds a user, changes the role, disables and enables, sets a new password, each with its
audit row; the rules that keep an admin; errors at their fields; viewers are refused. Also the
job page's timings in words and units, and the favicon.

Through the real app over uvicorn (tests/admin/conftest.py), on SQLite and PostgreSQL. Not
covered: the login lockout (tests/admin/test_api.py).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from dicom_node.db.models import AuditEntry, User
from tests.admin.conftest import ADMIN, PASSWORD, VIEWER, AdminApp, Browser, finished_job

NEW_PASSWORD = "another long passphrase"


def _audit(app: AdminApp, action: str) -> list[AuditEntry]:
    with app.db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def _before(entry: AuditEntry) -> dict[str, Any]:
    assert entry.before is not None
    return entry.before


def _after(entry: AuditEntry) -> dict[str, Any]:
    assert entry.after is not None
    return entry.after


def _user_id(app: AdminApp, name: str) -> int:
    with app.db.session() as s:
        user = s.scalar(select(User).where(User.name == name))
        assert user is not None
        return user.id


def test_an_admin_manages_users_in_the_pages(admin_app: AdminApp) -> None:
    browser = admin_app.browser()
    page = browser.get("/users")
    assert page.status_code == 200 and "New user" in page.text and f'{ADMIN} <span class="muted">(you)' in page.text

    # Errors at their fields; nothing is made.
    refused = browser.post(
        "/users", {"name": "carol", "role": "viewer", "password": "short", "password_again": "short"}
    )
    assert refused.status_code == 422 and re.search(
        r'id="error-password"[^>]*>must be at least 10 characters long', refused.text
    )
    refused = browser.post(
        "/users", {"name": "carol", "role": "viewer", "password": PASSWORD, "password_again": PASSWORD + "x"}
    )
    assert refused.status_code == 422 and "the two passwords differ" in refused.text
    refused = browser.post(
        "/users", {"name": VIEWER, "role": "viewer", "password": PASSWORD, "password_again": PASSWORD}
    )
    assert refused.status_code == 422 and "exists already" in refused.text
    assert _audit(admin_app, "user.create") == []

    made = browser.post("/users", {"name": "carol", "role": "viewer", "password": PASSWORD, "password_again": PASSWORD})
    assert made.status_code == 303
    assert "User carol (viewer) added." in browser.get("/users").text
    created = _audit(admin_app, "user.create")
    assert [(e.actor, e.target, _after(e)["role"]) for e in created] == [(ADMIN, "carol", "viewer")]
    assert "password" not in str(created[0].after)
    carol = _user_id(admin_app, "carol")
    admin_app.browser("carol")  # she can log in

    assert browser.post(f"/users/{carol}/role", {"role": "admin"}).status_code == 303
    roles = _audit(admin_app, "user.role")
    assert [(_before(e)["role"], _after(e)["role"]) for e in roles] == [("viewer", "admin")]
    assert "carol is now admin." in browser.get(f"/users/{carol}").text

    assert browser.post(f"/users/{carol}/enabled", {"enabled": "false"}).status_code == 303
    assert [(_before(e)["enabled"], _after(e)["enabled"]) for e in _audit(admin_app, "user.disable")] == [(True, False)]
    disabled = Browser(admin_app.client())
    disabled.get("/login")
    assert disabled.post("/login", {"name": "carol", "password": PASSWORD, "next": "/"}).status_code == 401
    assert browser.post(f"/users/{carol}/enabled", {"enabled": "true"}).status_code == 303
    assert len(_audit(admin_app, "user.enable")) == 1

    mismatch = browser.post(f"/users/{carol}/password", {"password": NEW_PASSWORD, "password_again": "different"})
    assert mismatch.status_code == 422 and "the two passwords differ" in mismatch.text
    assert (
        browser.post(f"/users/{carol}/password", {"password": NEW_PASSWORD, "password_again": NEW_PASSWORD}).status_code
        == 303
    )
    assert [e.target for e in _audit(admin_app, "user.set_password")] == ["carol"]
    admin_app.browser("carol", NEW_PASSWORD)
    # The user's page shows what happened to them.
    history = browser.get(f"/users/{carol}").text
    assert all(
        action in history for action in ("user.create", "user.role", "user.disable", "user.enable", "user.set_password")
    )


def test_an_admin_is_always_left(admin_app: AdminApp) -> None:
    browser = admin_app.browser()
    me = _user_id(admin_app, ADMIN)
    refused = browser.post(f"/users/{me}/enabled", {"enabled": "false"})
    assert refused.status_code == 422 and "you can not disable yourself" in refused.text
    refused = browser.post(f"/users/{me}/role", {"role": "viewer"})
    assert refused.status_code == 422 and "you can not demote yourself" in refused.text
    refused = browser.post(f"/users/{me}/role", {"role": "superuser"})
    assert refused.status_code == 422 and "must be one of admin, viewer" in refused.text
    assert _audit(admin_app, "user.disable") == [] and _audit(admin_app, "user.role") == []


def test_viewers_may_not_manage_users(admin_app: AdminApp) -> None:
    browser = admin_app.browser(VIEWER)
    me = _user_id(admin_app, VIEWER)
    assert browser.get("/users").status_code == 403
    assert browser.get(f"/users/{me}").status_code == 403
    assert (
        browser.post(
            "/users", {"name": "mallory", "role": "admin", "password": PASSWORD, "password_again": PASSWORD}
        ).status_code
        == 403
    )
    assert browser.post(f"/users/{me}/role", {"role": "admin"}).status_code == 403
    assert "/users" not in browser.get("/").text.split("<main>")[0]


def test_job_timings_in_words_and_units(admin_app: AdminApp) -> None:
    _, job_id, _ = finished_job(admin_app)
    page = admin_app.browser().get(f"/jobs/{job_id}").text
    timings = page[page.index("<h2>Timings</h2>") : page.index("</dl>", page.index("<h2>Timings</h2>"))]
    assert "<dt>Reading the series</dt><dd>0.50 s</dd>" in timings
    assert "<dt>Analysis by the model</dt><dd>2.50 s</dd>" in timings
    assert "<dt>Writing the DICOM results</dt><dd>0.30 s</dd>" in timings
    assert re.search(r"<dt>Attempts</dt><dd>\d+</dd>", timings), "a count, not a time"
    assert "queue_wait" not in timings and "inference<" not in timings


def test_the_favicon(admin_app: AdminApp) -> None:
    with admin_app.client() as anonymous:
        icon = anonymous.get("/favicon.ico")
        assert icon.status_code == 301 and icon.headers["location"] == "/static/favicon.svg"
        svg = anonymous.get("/static/favicon.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml") and "<svg" in svg.text
        assert 'rel="icon" href="/static/favicon.svg"' in anonymous.get("/login").text
