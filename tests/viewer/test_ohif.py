"""The results as a radiologist sees them: the OHIF viewer (npm package @ohif/app, fetched once into
its cache, dicom_node/viewer/ohif.py) in headless Chromium, reading Orthanc (Debian's orthanc and
orthanc-dicomweb) through the viewer's proxy (dicom_node/viewer/proxy.py), with results from a real
node: ``dicom-node up`` with the shipped model, DCMTK's storescu sending a COVID-19 and a CAP
phantom to the node and to Orthanc, the node sending SR, SC, SEG, KOS and Parametric Map to Orthanc.

Covers, per phantom, as a radiologist would do it: the study opens; the SR opens in OHIF's SR
viewport with no error, OHIF takes one measurement per suspected-infection region (and one for the
classification), each drawn on its CT image, and the viewport's measurement arrows jump to each
region's slice; the SEG loads with its segments; the Parametric Map is fused on the CT (a second
layer in the viewport, colour over the grey CT); the SC overlay renders. A SEVERE console message
fails the test (every one that appeared concerned our objects; none is allowed). Screenshots of
each step go to test-artifacts/viewer/.

OHIF's "Measurements" panel lists only measurements it can rehydrate into its own editable tools
(SRs it wrote itself); any other TID 1500 SR is shown read-only in the SR viewport, its findings
stepped through with the viewport's arrows: that is what is checked. Not covered: the KOS (OHIF
3.x does not support Key Object Selection), the SR's content (tests/outputs).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from dicom_node.db.models import Job
from dicom_node.viewer.ohif import ohif_dist
from dicom_node.viewer.proxy import ViewerServer, start_viewer_server
from tests.e2e.stack import Node, done_and_exported, series_uids
from tests.harness.peers import Orthanc, require_tool, storescu
from tests.harness.synthetic import clear_phantom

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "viewer"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# The phantoms sent (kind, seed); small so that the suite stays within minutes on 2 CPU cores.
PHANTOMS = (("covid", 31), ("cap", 32))
SLICES, MATRIX = 24, 256


@dataclass
class Study:
    kind: str
    study_uid: str
    decision: str
    regions: int  # suspected-infection regions of the result


@dataclass
class Stack:
    viewer: ViewerServer
    orthanc: Orthanc
    studies: dict[str, Study]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Orthanc with DICOMweb, the viewer on it, a node sending its results there, and both
    phantoms analysed and exported (the CT sent to Orthanc too, as the scanner would)."""
    tmp = tmp_path_factory.mktemp("viewer")
    dist = ohif_dist()  # the npm package, from its cache (tests/run fetches it once)
    orthanc = Orthanc(tmp / "orthanc", aet="VIEWER", dicomweb=True).start()
    viewer = start_viewer_server(dist, orthanc.url)
    node = Node(tmp)
    node.configure([(orthanc.aet, orthanc.dicom_port)])
    studies: dict[str, Study] = {}
    try:
        node.start("up", "--shutdown-seconds", "5").wait_for_port(node.port, timeout=120)
        folders = {}
        for kind, seed in PHANTOMS:
            folder = clear_phantom(kind, tmp / f"{kind}-{seed}", seed, slices=SLICES, rows=MATRIX, write_masks=False)
            sent = storescu(folder, orthanc.dicom_port, called=orthanc.aet)
            assert sent.returncode == 0, sent.stderr
            node.send(folder)
            folders[kind] = folder
        for kind, folder in folders.items():
            study_uid, series_uid = series_uids(folder)
            job = node.wait(done_and_exported(series_uid), 420, f"the {kind} job to be done and exported")
            with node.db.session() as s:
                row = s.get(Job, job["id"])
                assert row is not None
                regions = len((row.result or {}).get("regions") or [])
            studies[kind] = Study(kind, study_uid, str(job["decision"]), regions)
        yield Stack(viewer, orthanc, studies)
    finally:
        node.stop()
        viewer.shutdown()
        viewer.server_close()
        orthanc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    require_tool("chromium", "chromium")
    require_tool("chromedriver", "chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900",
        "--enable-unsafe-swiftshader",  # WebGL in software: OHIF renders with it
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


class Ohif:
    """The steps a radiologist takes in OHIF, with the checks and a screenshot after each."""

    def __init__(self, driver: webdriver.Chrome, stack: Stack, study: Study) -> None:
        self.driver = driver
        self.stack = stack
        self.study = study
        self.driver.get_log("browser")  # drop what earlier pages logged

    def open_study(self) -> None:
        self.driver.get(f"{self.stack.viewer.url}/viewer?StudyInstanceUIDs={self.study.study_uid}")
        self.wait(
            lambda d: self.script(
                "return !!(window.services && window.services.displaySetService.getActiveDisplaySets().length >= 5)"
            ),
            60,
            "the study's series",
        )
        self.wait(lambda d: self.current_sop() is not None, 60, "the first image")

    def wait(self, condition: Any, timeout: float, what: str) -> Any:
        try:
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.25,
                ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
            ).until(condition)
        except Exception as exc:
            self.shot("failed")
            raise AssertionError(
                f"{self.study.kind}: timed out waiting for {what}; page says: {self.text()[:1500]}"
            ) from exc

    def script(self, code: str, *args: Any) -> Any:
        return self.driver.execute_script(code, *args)

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def shot(self, step: str) -> None:
        self.driver.save_screenshot(str(ARTIFACTS / f"{self.study.kind}-{step}.png"))

    def open_series(self, description: str) -> None:
        """Double-click a series of the study browser, as a person does to show it."""
        label = self.wait(
            lambda d: d.find_element(By.XPATH, f"//*[contains(text(), '{description}')]"),
            30,
            f"the series '{description}'",
        )
        ActionChains(self.driver).double_click(label.find_element(By.XPATH, "..")).perform()

    def current_sop(self) -> str | None:
        """The SOP Instance UID of the image shown in the active viewport."""
        image_id = self.script(
            "const s = window.services; if (!s) return null;"
            "const vp = s.cornerstoneViewportService.getCornerstoneViewport("
            "s.viewportGridService.getActiveViewportId());"
            "return vp && vp.getCurrentImageId ? vp.getCurrentImageId() : null;"
        )
        if not image_id or "/instances/" not in image_id:
            return None
        return str(image_id.split("/instances/")[1].split("/")[0])

    def viewport_colour(self) -> float:
        """The share of clearly coloured pixels in the active viewport (the CT is grey)."""
        element = self.driver.find_element(By.CSS_SELECTOR, "[data-cy='viewport-pane']")
        rgb = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(int)
        spread = rgb.max(axis=2) - rgb.min(axis=2)
        return float((spread > 60).mean())

    def assert_no_errors(self) -> None:
        body = self.text()
        for phrase in ("Something went wrong", "not supported", "not compatible"):
            assert phrase not in body, f"{self.study.kind}: OHIF says {phrase!r}: {body[:1500]}"
        severe = [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], f"{self.study.kind}: console errors: {json.dumps(severe, indent=1)[:4000]}"


def expected_regions(study: Study) -> int:
    """The regions the SR must show: each phantom is decided as its kind, with regions."""
    assert study.decision == study.kind and study.regions >= 1, study
    return study.regions


@pytest.mark.parametrize("kind", [kind for kind, _ in PHANTOMS])
def test_the_sr_opens_lists_every_region_and_jumps_to_its_slice(
    stack: Stack, browser: webdriver.Chrome, kind: str
) -> None:
    study = stack.studies[kind]
    regions = expected_regions(study)
    ohif = Ohif(browser, stack, study)
    ohif.open_study()
    ohif.shot("1-study")
    ohif.open_series("COVID-CT report")
    measurements = ohif.wait(
        lambda d: ohif.script(
            "const sr = window.services.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'SR');"
            "return sr && sr.isLoaded && sr.measurements ? sr.measurements.map(m => ({"
            "id: m.TrackingIdentifier, loaded: m.loaded, sop: m.ReferencedSOPInstanceUID || null,"
            " labels: (m.labels || []).map(l => l.label + ': ' + l.value)})) : null;"
        ),
        60,
        "the SR's measurements",
    )
    time.sleep(1.0)  # the SR viewport draws
    ohif.shot("2-sr")
    ohif.assert_no_errors()
    found = [m for m in measurements if m["id"].startswith("Suspected infection region")]
    classification = [m for m in measurements if m["id"].startswith("Series classification")]
    assert len(found) == regions, measurements
    assert len(classification) == (0 if study.decision == "no_decision" else 1), measurements
    assert all(m["loaded"] and m["sop"] for m in measurements), (
        f"not every measurement is on a CT image: {measurements}"
    )
    for m in found:
        assert any(label.startswith("Volume:") for label in m["labels"]) and any(
            label.startswith("Area:") for label in m["labels"]
        ), m
    # The viewport's measurement arrows step through the findings: each region's slice is shown.
    to_see = {m["sop"] for m in found}
    for step in range(len(measurements) + 1):
        if not to_see:
            break
        browser.find_element(By.CSS_SELECTOR, "[data-cy='viewport-action-arrows-right']").click()
        time.sleep(1.5)  # two findings may share a slice: the image need not change
        shown = ohif.current_sop()
        if shown in to_see:
            to_see.discard(shown)
            ohif.shot(f"3-region-on-its-slice-{step}")
    assert not to_see, f"the arrows never showed the slices {to_see}"
    ohif.assert_no_errors()


@pytest.mark.parametrize("kind", [kind for kind, _ in PHANTOMS])
def test_the_seg_loads_with_its_segments(stack: Stack, browser: webdriver.Chrome, kind: str) -> None:
    study = stack.studies[kind]
    regions = expected_regions(study)
    ohif = Ohif(browser, stack, study)
    ohif.open_study()
    ohif.open_series("COVID-CT infection SEG")
    yes = ohif.wait(
        lambda d: next((b for b in d.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Yes"), None),
        30,
        "OHIF asking to load the SEG",
    )
    yes.click()
    segments = ohif.wait(
        lambda d: ohif.script(
            "const s = window.services.segmentationService.getSegmentations();"
            "return s.length ? Object.values(s[0].segments).filter(Boolean).map(x => x.label) : null;"
        ),
        60,
        "the segmentation",
    )
    time.sleep(1.0)
    ohif.shot("4-seg")
    # In number order ("Suspected infection 10" after 9, not after 1).
    assert sorted(segments, key=lambda label: int(label.rsplit(" ", 1)[-1])) == [
        f"Suspected infection {i}" for i in range(1, regions + 1)
    ], segments
    ohif.assert_no_errors()


@pytest.mark.parametrize("kind", [kind for kind, _ in PHANTOMS])
def test_the_parametric_map_is_fused_on_the_ct(stack: Stack, browser: webdriver.Chrome, kind: str) -> None:
    study = stack.studies[kind]
    expected_regions(study)
    ohif = Ohif(browser, stack, study)
    ohif.open_study()
    grey = ohif.viewport_colour()
    ohif.open_series("COVID-CT heatmap map")
    layers = ohif.wait(
        lambda d: ohif.script(
            "const s = window.services;"
            " const pm = s.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'PMAP');"
            "const vp = s.cornerstoneViewportService.getCornerstoneViewport("
            "s.viewportGridService.getActiveViewportId());"
            "return pm && pm.isLoaded && vp && vp.getActors && vp.getActors().length >= 2"
            " ? vp.getActors().length : null;"
        ),
        90,
        "the map fused on the CT",
    )
    time.sleep(2.0)  # the fused volume renders
    assert layers >= 2
    # The view opens on the middle slice, which need not hold the finding: the arrow keys (OHIF's
    # previous / next image) go through every slice, and the most coloured one is kept.
    keys = ActionChains(browser)
    for _ in range(SLICES):
        keys.send_keys(Keys.ARROW_UP)
    keys.perform()
    colour = []
    for _ in range(SLICES):
        time.sleep(0.3)
        colour.append(ohif.viewport_colour())
        ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
    best = int(np.argmax(colour))
    for _ in range(SLICES - 1 - best):
        ActionChains(browser).send_keys(Keys.ARROW_UP).perform()
    time.sleep(1.0)
    ohif.shot("5-parametric-map-on-ct")
    assert max(colour) > grey + 0.001, f"no colour over the CT on any slice: {colour}"
    ohif.assert_no_errors()


@pytest.mark.parametrize("kind", [kind for kind, _ in PHANTOMS])
def test_the_sc_overlay_renders(stack: Stack, browser: webdriver.Chrome, kind: str) -> None:
    study = stack.studies[kind]
    ohif = Ohif(browser, stack, study)
    ohif.open_study()
    first_ct = ohif.current_sop()
    ohif.open_series("COVID-CT heatmap NOT")
    ohif.wait(lambda d: ohif.current_sop() not in (None, first_ct), 30, "an SC image")
    time.sleep(1.0)
    ohif.shot("6-sc")
    assert ohif.viewport_colour() > 0.001, "the overlay shows no colour (label, colour bar, heatmap)"
    ohif.assert_no_errors()
