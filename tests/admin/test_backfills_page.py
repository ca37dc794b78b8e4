"""Backfills in the admin pages (/backfills) through the admin app (uvicorn on a loopback port,
SQLite and PostgreSQL), with Orthanc as the source PACS.

Covers: the form refusing a bad date at its field; a backfill started from the form is run by
serve's loop (dicom_node.pipeline.backfill.run_next, called here as serve calls it) by C-GET; its
page and the list show its progress and its series; a second backfill of the same study skips the
series already here; the navigation's link for admins only and 403 for viewers. Not covered: the
command line and C-MOVE (tests/integration/test_backfill.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.configuration import DestinationIn, LocalAEIn, add_destination, add_local_ae
from dicom_node.pipeline.backfill import run_next
from model.phantoms.writer import write_phantom_series
from tests.admin.conftest import PASSWORD, VIEWER, AdminApp
from tests.harness.peers import Orthanc, storescu

pytestmark = pytest.mark.integration


def test_a_backfill_started_from_the_page(admin_app: AdminApp, tmp_path: Path) -> None:
    modalities = {"scu": [admin_app.settings.export.calling_ae_title, "127.0.0.1", 104]}
    orthanc = Orthanc(tmp_path / "orthanc", modalities=modalities).start()
    try:
        folder = write_phantom_series(
            "normal", tmp_path / "ct", seed=951, slices=6, rows=64, columns=64, write_masks=False
        )
        assert storescu(folder, orthanc.dicom_port, called=orthanc.aet).returncode == 0
        with admin_app.db.session() as s:
            add_local_ae(s, LocalAEIn(title="COVIDNODE", port=11112), admin_app.settings.completion)
            add_destination(
                s, DestinationIn(title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port), admin_app.settings.export
            )
        browser = admin_app.browser()
        page = browser.get("/backfills")
        assert page.status_code == 200 and 'href="/backfills"' in page.text
        bad = browser.post("/backfills", {"source": "ORTHANC", "date_from": "1/11/2026", "method": "get"})
        assert bad.status_code == 422 and 'id="error-date_from"' in bad.text
        started = browser.post(
            "/backfills",
            {
                "source": "ORTHANC",
                "date_from": "1900-01-01",
                "date_to": "2100-12-31",
                "modality": "CT",
                "method": "get",
            },
        )
        assert started.status_code == 303 and started.headers["location"] == "/backfills/1"
        assert "querying" in browser.get("/backfills/1").text

        assert run_next(admin_app.db, admin_app.settings) == 1  # what serve's loop does
        assert run_next(admin_app.db, admin_app.settings) is None
        detail = browser.get("/backfills/1").text
        assert "1 of 1 series retrieved" in detail and "b-done" in detail and "b-retrieved" in detail
        listed = browser.get("/backfills").text
        assert "1/1 retrieved" in listed

        browser.get("/backfills")
        browser.post("/backfills", {"source": "ORTHANC", "date_from": "1900-01-01", "method": "get"})
        assert run_next(admin_app.db, admin_app.settings) == 2
        again = browser.get("/backfills/2").text
        assert "0 of 0 series retrieved" in again and "b-skipped" in again and "being received now" in again
    finally:
        orthanc.stop()
    viewer = admin_app.browser(VIEWER, PASSWORD)
    assert 'href="/backfills"' not in viewer.get("/").text
    assert viewer.get("/backfills").status_code == 403
