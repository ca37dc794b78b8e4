"""The results in a second viewer: the Orthanc Web Viewer (Debian package orthanc-webviewer, an
Orthanc plugin built on legacy cornerstone) in headless Chromium, on an Orthanc that a real node
sends its results to (tests.viewer.studies: ``dicom-node up`` with the shipped model, a COVID-19
phantom's CT sent by DCMTK's storescu to the node and to Orthanc).

The Web Viewer shows one series at a time (``/web-viewer/app/viewer.html?series=ID``, what the
"Orthanc Web Viewer" button of a series page in Orthanc Explorer opens), as a stack with a slider;
the series of a study are listed by Orthanc Explorer's study page. Checked, on the pixels of the
viewer's canvas (as cornerstone drew them), as a radiologist would:

- the study page lists the CT and every result series (SR, SC, SEG, KOS, Parametric Map);
- the CT and the SC overlay render (not blank; the CT grey, the SC with colour);
- on the SC image of the slice with the most lesion, the heat colour lies on the lesion (the
  phantom's masks mapped onto the canvas with cornerstone's pixelToCanvas): at least a fifth of
  the lesion coloured, at least half of the colour in the lungs within 3 pixels of the lesion;
- what the viewer does with the SR, SEG, KOS and Parametric Map is recorded, not asserted (the
  README says what it shows): test-artifacts/viewer/second-viewer.json.

Screenshots of each step go to test-artifacts/viewer/ (``webviewer-*.png``). The first test's time
includes the stack's: a node started and the phantom analysed and exported.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException, UnexpectedAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.harness.peers import Orthanc
from tests.viewer.studies import ARTIFACTS, Study, analysed_studies, coloured, on_canvas

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

# The COVID-19 phantom of tests/viewer/test_ohif.py (a finding with regions in the lungs).
PHANTOMS = {"covid-ascending": ("covid", 42, False)}
# What each series is, by SOP Class UID.
KINDS = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.7": "SC",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.88.59": "KOS",
    "1.2.840.10008.5.1.4.1.1.30": "PM",
}
# The Web Viewer's element that cornerstone draws in, and the image it shows.
ELEMENT_JS = "const el = document.getElementById('dicomImage');"
SHOWN_JS = (
    ELEMENT_JS + "let e = null; try { e = cornerstone.getEnabledElement(el); } catch (x) { return null; }"
    " return e && e.image ? e.image.imageId : null;"
)


@dataclass
class Series:
    id: str  # Orthanc's
    kind: str
    description: str


@dataclass
class Stack:
    orthanc: Orthanc
    study: Study
    study_id: str  # Orthanc's
    series: dict[str, Series]  # by kind


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Orthanc with the Web Viewer plugin, the phantom and the node's results for it there."""
    tmp = tmp_path_factory.mktemp("second-viewer")
    orthanc = Orthanc(tmp / "orthanc", aet="VIEWER2", webviewer=True).start()
    try:
        with analysed_studies(tmp, orthanc, PHANTOMS) as studies:
            study = studies["covid-ascending"]
        assert study.decision == "covid" and study.regions >= 1, (study.decision, study.regions)
        (study_id,) = [
            s["ID"]
            for s in orthanc.get("/studies?expand")
            if s["MainDicomTags"].get("StudyInstanceUID") == study.study_uid
        ]
        series = {}
        for s in orthanc.get(f"/studies/{study_id}/series"):
            first = orthanc.instance_tags(s["Instances"][0])
            kind = KINDS.get(str(first.get("SOPClassUID")), str(first.get("SOPClassUID")))
            series[kind] = Series(s["ID"], kind, s["MainDicomTags"].get("SeriesDescription", ""))
        assert set(series) == set(KINDS.values()), series
        yield Stack(orthanc, study, study_id, series)
    finally:
        orthanc.stop()


class WebViewer:
    """The steps a radiologist takes in Orthanc Explorer and the Web Viewer, with a screenshot
    after each."""

    def __init__(self, driver: webdriver.Chrome, stack: Stack) -> None:
        self.driver = driver
        self.stack = stack

    def shot(self, step: str) -> None:
        self.driver.save_screenshot(str(ARTIFACTS / f"webviewer-{step}.png"))

    def script(self, code: str, *args: Any) -> Any:
        return self.driver.execute_script(code, *args)

    def alert(self) -> str | None:
        """The text of an alert the page raised (the Web Viewer's way of saying that Orthanc can
        not decode an image), accepted; None without one."""
        try:
            alert = self.driver.switch_to.alert
            text = str(alert.text)
            alert.accept()
        except NoAlertPresentException:
            return None
        return text

    def study_page(self) -> list[str]:
        """The series descriptions Orthanc Explorer's study page lists."""
        self.driver.get(f"{self.stack.orthanc.url}/app/explorer.html#study?uuid={self.stack.study_id}")
        WebDriverWait(self.driver, 60, poll_frequency=0.25).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#list-series li h3")) >= len(self.stack.series)
        )
        self.shot("1-study")
        return [str(h.text) for h in self.driver.find_elements(By.CSS_SELECTOR, "#list-series li h3")]

    def open(self, series: Series, timeout: float = 60) -> dict[str, Any]:
        """Open a series in the Web Viewer; what it shows: the image (cornerstone's image id) or
        None, the alert it raised, the slices it lists."""
        self.driver.get(self.stack.orthanc.webviewer_url(series.id))
        slices = list(self.stack.orthanc.get(f"/web-viewer/series/{series.id}").get("Slices") or [])
        seen: dict[str, Any] = {"slices": len(slices), "shown": None, "alert": None}

        def settled(driver: webdriver.Chrome) -> bool:
            try:
                seen["alert"] = self.alert()
                if seen["alert"] is None:
                    seen["shown"] = self.script(SHOWN_JS)
            except UnexpectedAlertPresentException as exc:  # raised while asking: chromedriver dismissed it
                seen["alert"] = exc.alert_text
            return bool(seen["alert"] or seen["shown"])

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(settled)
        except TimeoutException:
            pass
        self.shot(f"2-{series.kind.lower()}")
        return seen

    def go_to(self, index: int, slices: list[str]) -> None:
        """Move the slider to slice ``index`` with the keyboard, as a person does, and wait until
        cornerstone shows it."""
        handle = self.driver.find_element(By.CSS_SELECTOR, "#slider .ui-slider-handle")
        handle.click()
        handle.send_keys(Keys.HOME)
        for _ in range(index):
            handle.send_keys(Keys.ARROW_RIGHT)
        WebDriverWait(self.driver, 30, poll_frequency=0.25).until(lambda d: self.script(SHOWN_JS) == slices[index])
        self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "requestAnimationFrame(() => requestAnimationFrame(() => done(true)));"
        )

    def canvas(self) -> tuple[np.ndarray, np.ndarray]:
        """The viewer's canvas as cornerstone drew it (RGB, without the text the page writes over
        it) and the mapping of the image's pixels onto it: canvas (x, y) = origin + column * a +
        row * b, as a 2 x 3 matrix [a b origin], pixel centres (cornerstone's pixelToCanvas)."""
        found = self.script(
            ELEMENT_JS + "const c = el.querySelector('canvas');"
            " return {png: c.toDataURL('image/png'), width: c.width, points: [[0.5, 0.5], [1.5, 0.5], [0.5, 1.5]].map("
            " p => { const q = cornerstone.pixelToCanvas(el, {x: p[0], y: p[1]}); return [q.x, q.y]; })};"
        )
        png = base64.b64decode(str(found["png"]).split(",", 1)[1])
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        scale = rgb.shape[1] / float(found["width"])
        origin, along_row, along_column = (np.array(q, dtype=float) * scale for q in found["points"])
        return rgb, np.stack([along_row - origin, along_column - origin, origin], axis=1)


def test_the_study_page_lists_the_ct_and_every_result(stack: Stack, browser: webdriver.Chrome) -> None:
    listed = WebViewer(browser, stack).study_page()
    for series in stack.series.values():
        assert series.description in listed, f"{series.kind} ({series.description!r}) is not listed: {listed}"


@pytest.mark.parametrize("kind", ["CT", "SC"])
def test_the_ct_and_the_sc_render(stack: Stack, browser: webdriver.Chrome, kind: str) -> None:
    viewer = WebViewer(browser, stack)
    seen = viewer.open(stack.series[kind])
    assert seen["alert"] is None and seen["shown"], f"the {kind} does not show: {seen}"
    rgb, mapping = viewer.canvas()
    Image.fromarray(rgb.astype(np.uint8)).save(ARTIFACTS / f"webviewer-3-{kind.lower()}-canvas.png")
    image = on_canvas(np.ones(stack.study.lungs.shape[1:], dtype=bool), mapping, rgb.shape)
    grey = rgb.mean(axis=2)[image]
    assert grey.std() > 10, f"the {kind} is blank (grey levels {grey.min():.0f}-{grey.max():.0f})"
    colour = float(coloured(rgb)[image].mean())
    if kind == "CT":
        assert colour < 0.0005, f"the CT shows colour on {colour:.2%} of the image"
    else:
        assert colour > 0.002, f"the SC shows colour on {colour:.2%} of the image only (label, colour bar, heat)"


def test_the_heat_on_the_sc_is_on_the_lesion(stack: Stack, browser: webdriver.Chrome) -> None:
    study = stack.study
    sc = stack.series["SC"]
    viewer = WebViewer(browser, stack)
    seen = viewer.open(sc)
    assert seen["alert"] is None and seen["shown"], f"the SC does not show: {seen}"
    slices = list(stack.orthanc.get(f"/web-viewer/series/{sc.id}")["Slices"])
    # The CT slice each SC image is on (by its position), and the SC image of the slice with the
    # most lesion among them.
    on_slice = []
    for image_id in slices:
        tags = stack.orthanc.instance_tags(image_id.split("_")[0])
        position = [float(v) for v in str(tags["ImagePositionPatient"]).split("\\")]
        on_slice.append(study.slice_at(position))
    index = max(range(len(slices)), key=lambda i: int(study.lesions[on_slice[i]].sum()))
    k = on_slice[index]
    assert study.lesions[k].any(), f"no SC image is on a slice with lesion (SC on slices {on_slice})"
    viewer.go_to(index, slices)
    rgb, mapping = viewer.canvas()
    Image.fromarray(rgb.astype(np.uint8)).save(ARTIFACTS / "webviewer-4-sc-on-lesion-slice.png")
    viewer.shot("4-sc-on-lesion-slice")
    heat = coloured(rgb)
    lesion = on_canvas(study.lesions[k], mapping, rgb.shape)
    near = on_canvas(ndimage.binary_dilation(study.lesions[k], iterations=3), mapping, rgb.shape)
    lungs = on_canvas(study.lungs[k], mapping, rgb.shape)
    covered = float((heat & lesion).sum()) / max(int(lesion.sum()), 1)
    in_lungs = heat & lungs
    on_lesion = float((in_lungs & near).sum()) / max(int(in_lungs.sum()), 1)
    assert covered >= 0.2, f"only {covered:.0%} of the lesion on slice {k} is coloured"
    assert on_lesion >= 0.5, f"only {on_lesion:.0%} of the colour in the lungs on slice {k} is at the lesion"


def test_what_the_viewer_does_with_the_sr_seg_kos_and_map(stack: Stack, browser: webdriver.Chrome) -> None:
    """Recorded in test-artifacts/viewer/second-viewer.json (the README says what it shows)."""
    viewer = WebViewer(browser, stack)
    record = {}
    for kind in ("SR", "SEG", "KOS", "PM"):
        seen = viewer.open(stack.series[kind], timeout=30)
        record[kind] = dict(seen, description=stack.series[kind].description)
        if seen["shown"]:
            rgb, _ = viewer.canvas()
            record[kind]["blank"] = bool(rgb.mean(axis=2).std() <= 10)
            record[kind]["coloured"] = float(coloured(rgb).mean())
    (ARTIFACTS / "second-viewer.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
