"""The admin pages in headless Chromium (Debian's chromium and chromedriver, driven by selenium)
against a real node: ``dicom-node up`` (listener, completion, admin app and a Celery worker with
the real pipeline), DCMTK's storescu as the modality, Orthanc as the PACS.

Covers, as a person would do it: log in; a form refusing a 17-character AE title at its field;
add a source and a destination; C-ECHO the destination (Orthanc) and read the answer; change the
local AE's quiet period (30 s -> 4 s) and its destinations, send a series and see, in the series
list that refreshes itself, that it completes after the new quiet period; the jobs list turning
the job to done by itself; open the finished job and see its heatmap preview (the SC the worker
wrote) with the "not for clinical use" notice and its export to Orthanc; delete the source after
the confirmation page. Screenshots of each step are saved under test-artifacts/admin-browser/.

The worker runs a small untrained network (saved with model.inference.weights for this test, CAM
localisation): the pipeline is the real one, the model's answer is meaningless and not checked
(tests/model covers the model). Not covered: API details (test_api.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest
import torch
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select

from dicom_node.db.times import as_utc
from model.inference.network import WeaklySupervisedNet
from model.inference.preprocess import InputSpec
from model.inference.weights import save_weights
from model.phantoms.writer import write_phantom_series
from tests.admin.conftest import ADMIN, PASSWORD, LiveNode, Pages, start_live_node
from tests.harness.peers import Orthanc, cli, free_port, node_env, port_open, storescu, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

LOCAL_AE = "CTNODE"
CALLING = "MODALITY1"
OLD_QUIET, NEW_QUIET = 30, 4


def untrained_weights(folder: Path) -> Path:
    """A small network with random weights (seeded), saved as the worker loads weights."""

    torch.manual_seed(0)
    network = WeaklySupervisedNet(widths=(8, 16, 16), depths=(1, 1, 1), head_blocks=(2, 3))
    metadata = {
        "name": "admin-test-untrained",
        "version": "0.0",
        "classes": ["covid", "cap", "normal"],
        "input": InputSpec().to_json(),
    }
    save_weights(network, folder, metadata)
    return folder


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[LiveNode, int]]:
    """``dicom-node up`` with a local AE (quiet period 30 s) made on the command line; yields
    the node and the AE's port."""
    data_dir = tmp_path / "node-data"
    port = free_port()
    settings = {
        "worker__weights_dir": untrained_weights(tmp_path / "weights"),
        "worker__device": "cpu",
        "worker__localisation": "cam",
        "worker__sc_slices": "lung",
    }
    cli(
        node_env(data_dir, **settings),
        "ae",
        "add-local",
        LOCAL_AE,
        "--port",
        str(port),
        "--quiet-seconds",
        str(OLD_QUIET),
    )
    live = start_live_node(data_dir, ("up",), **settings)
    yield live, port
    live.process.stop(timeout=40)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


def _aware(value: str) -> dt.datetime:
    return as_utc(dt.datetime.fromisoformat(value))


def test_an_admin_configures_the_node_and_follows_a_series_to_its_preview(
    node: tuple[LiveNode, int], browser: WebDriver, pacs: Orthanc, tmp_path: Path
) -> None:
    live, ae_port = node
    p = Pages(browser, live.url)

    # Log in.
    p.open("/series")
    p.wait(EC.url_contains("/login?next="))
    p.shot("01-login")
    p.fill({"name": ADMIN, "password": PASSWORD})
    p.by_id("login").click()
    p.wait(EC.url_to_be(live.url + "/series"))

    # A source: first refused at the field, then added.
    p.open("/sources/new")
    p.fill({"title": "A" * 17})
    p.by_id("save").click()
    error = p.wait(EC.visibility_of_element_located((By.ID, "error-title")))
    assert error.text == "is 17 characters long, at most 16 are allowed"
    p.shot("02-source-refused-at-the-field")
    p.fill({"title": CALLING, "host": "127.0.0.1"})
    p.by_id("save").click()
    p.wait(EC.text_to_be_present_in_element((By.ID, "flash"), f"Source {CALLING} added."))
    p.shot("03-source-added")

    # A destination (Orthanc), then its C-ECHO test.
    p.open("/destinations/new")
    p.fill({"title": pacs.aet, "host": "127.0.0.1", "port": str(pacs.dicom_port)})
    p.by_id("save").click()
    p.wait(EC.text_to_be_present_in_element((By.ID, "flash"), f"Destination {pacs.aet} added."))
    browser.find_element(By.LINK_TEXT, pacs.aet).click()
    p.by_id("echo").click()
    answer = p.wait(EC.visibility_of_element_located((By.ID, "echo-result"))).text
    assert answer.startswith("Success") and "status 0x0000" in answer and "round trip" in answer, answer
    p.shot("04-destination-c-echo")

    # The local AE: quiet period 30 s -> 2 s, results to Orthanc.
    p.open("/local-aes")
    browser.find_element(By.LINK_TEXT, LOCAL_AE).click()
    assert p.by_id("quiet_seconds").get_attribute("value") == str(float(OLD_QUIET))
    p.fill({"quiet_seconds": str(NEW_QUIET)})
    browser.find_element(By.CSS_SELECTOR, f"input[name='send_results_to'][value='{pacs.aet}']").click()
    p.by_id("save").click()
    p.wait(EC.text_to_be_present_in_element((By.ID, "flash"), f"Local AE {LOCAL_AE} saved."))
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-title='{LOCAL_AE}']").text
    assert "listening" in row and pacs.aet in row, row
    p.shot("05-local-ae-changed")

    # Send a series; the series list (not reloaded) shows it receiving, then analysed.
    p.open("/series")
    browser.execute_script("window.notReloaded = true;")
    series_dir = write_phantom_series(
        "covid", tmp_path / "scanner", seed=3, slices=24, rows=128, columns=128, write_masks=False
    )
    # The fixture waits for the admin app only, and the page's "listening" is the AE's
    # configuration: on a loaded machine the listener process may still be starting. Wait for
    # the port itself.
    wait_until(lambda: port_open(ae_port), 30, "the local AE's port to be open")
    sent = storescu(series_dir, ae_port, calling=CALLING, called=LOCAL_AE)
    assert sent.returncode == 0, sent.stderr
    # All 24 images in, and no longer receiving (a machine that stalls longer than the quiet
    # period in the middle of the sending completes and re-opens the series: that is allowed).
    p.wait(
        lambda d: (
            (cells := p.cells("#series-rows tr[data-series-uid]"))
            and cells["Images"] == "24"
            and cells["State"] not in ("receiving", "")
        ),
        60,
    )
    assert browser.execute_script("return window.notReloaded === true;")
    p.shot("06-series-completed")
    with live.api() as api:
        series = wait_until(
            lambda: [s for s in api.get("/api/series").json() if s["series_status"] != "receiving"],
            20,
            "the series to complete",
        )[0]
        detail = api.get(f"/api/series/{series['id']}").json()
    quiet = (_aware(detail["completed_at"]) - _aware(detail["last_received_at"])).total_seconds()
    assert NEW_QUIET <= quiet < OLD_QUIET, f"completed {quiet:.1f} s after the last image"
    job_id = series["job_id"]
    assert job_id is not None, series

    # The jobs list turns the job to done by itself (the worker runs the pipeline).
    p.open("/jobs")
    browser.execute_script("window.notReloaded = true;")
    job_row = f"#job-rows tr[data-job-id='{job_id}']"
    p.wait(lambda d: (cells := p.cells(job_row)) and cells["State"] in ("done", "failed"), 180)
    assert (p.cells(job_row) or {}).get("State") == "done", p.cells(job_row)
    assert browser.execute_script("return window.notReloaded === true;")
    p.shot("07-jobs-list-done")
    Select(p.by_id("status")).select_by_value("done")  # the filter applies when chosen (own JS, no inline handler)
    p.wait(EC.url_contains("/jobs?status=done"))
    assert (p.cells(job_row) or {}).get("State") == "done"

    # The finished job: its heatmap previews with the notice, and its export to Orthanc.
    with live.api() as api:
        wait_until(
            lambda: all(e["status"] == "done" for e in api.get(f"/api/jobs/{job_id}").json()["exports"]),
            90,
            "the export to Orthanc",
        )
    p.open(f"/jobs/{job_id}")
    assert "Not for clinical use." in p.text()
    first = p.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#previews img.preview")))
    browser.execute_script("arguments[0].scrollIntoView();", p.by_id("previews"))
    p.wait(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", first), 30)
    assert browser.execute_script("return arguments[0].naturalWidth;", first) == 128
    browser.find_element(By.CSS_SELECTOR, "a[data-preview-index='1']").click()  # the next picture, same page
    p.wait(
        lambda d: (
            first.get_attribute("src").endswith("index=1")
            and d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", first)
        ),
        30,
    )
    assert p.by_id("preview-caption").text.startswith("2 / ")
    exports = p.by_id("exports").text
    assert pacs.aet in exports and "done" in exports, exports
    p.shot("08-job-preview")
    assert len(pacs.instances()) > 0

    # Deleting asks first.
    p.open("/sources")
    browser.find_element(By.CSS_SELECTOR, f"tr[data-title='{CALLING}'] a.danger").click()
    p.wait(EC.presence_of_element_located((By.ID, "confirm-delete")))
    p.shot("09-delete-confirmation")
    p.by_id("confirm-delete").click()
    p.wait(EC.text_to_be_present_in_element((By.ID, "flash"), f"Source {CALLING} removed."))
    p.open("/audit")
    log = p.text()
    for action in ("source.create", "destination.create", "local_ae.update", "source.delete"):
        assert action in log, action
    p.shot("10-audit-log")
