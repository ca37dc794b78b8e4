"""Fixtures of the admin tests: the admin app served by uvicorn on a loopback port over a real
database (SQLite and PostgreSQL), with an admin and a viewer user and a token for each (and a
radiologist, with the worklist's viewer link set); helpers for browser-like sessions (login form,
CSRF token), for a finished job's files and a worklist study; headless Chromium (the browser
fixture) and the steps a person takes in it (Pages); a local AE taking STOW-RS from a sender's
token (the stow fixture)."""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from dicom_node import configuration as c
from dicom_node.admin.auth import Passwords, create_token
from dicom_node.admin.server import AdminServerThread
from dicom_node.db import Database, upgrade
from dicom_node.db.models import Export, Job, Series, User
from dicom_node.db.times import utcnow
from dicom_node.jobs.states import ExportStatus, JobStatus, SeriesStatus
from dicom_node.settings import Settings
from dicom_node.triage.priority import Priority
from model.contract.uids import derived_uid
from tests.harness.browser import headless_chromium
from tests.harness.peers import NodeProcess, cli, free_port, node_env, wait_until

ADMIN, VIEWER, RADIOLOGIST = "alice", "victor", "rita"
PASSWORD = "correct horse battery staple"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class AdminApp:
    url: str
    settings: Settings
    db: Database
    admin_token: str
    viewer_token: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, follow_redirects=False)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def viewer(self) -> httpx.Client:
        return self.client(self.viewer_token)

    def browser(self, name: str = ADMIN, password: str = PASSWORD) -> "Browser":
        """A cookie-holding client logged in through the login form."""
        b = Browser(self.client())
        b.login(name, password)
        return b


class Browser:
    """httpx with the session cookie and the page's CSRF token, like a browser's form posts."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.csrf = ""

    def get(self, path: str, **kw: Any) -> httpx.Response:
        response = self.http.get(path, **kw)
        found = (
            CSRF_RE.search(response.text) if response.headers.get("content-type", "").startswith("text/html") else None
        )
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        return self.http.post(path, data=form)

    def login(self, name: str, password: str) -> httpx.Response:
        self.get("/login")
        response = self.post("/login", {"name": name, "password": password, "next": "/"})
        assert response.status_code == 303, response.text
        self.get("/")  # the login made a new CSRF token
        return response


@functools.lru_cache(maxsize=1)
def password_hash() -> str:
    return Passwords().hash(PASSWORD)


def make_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url, admin_port=free_port(), **overrides)


@pytest.fixture
def admin_app(database_url: str, tmp_path: Path) -> Iterator[AdminApp]:
    settings = make_settings(tmp_path / "node-data", database_url)
    upgrade(database_url)
    db = Database(database_url)
    with db.session() as s:
        # Users as create_user makes them, with one argon2 hash for all tests (a hash takes as
        # long as a login: most of a second on a busy two-core machine).
        alice = User(name=ADMIN, role="admin", password_hash=password_hash(), enabled=True)
        victor = User(name=VIEWER, role="viewer", password_hash=password_hash(), enabled=True)
        s.add_all([alice, victor])
        s.flush()
        _, admin_token = create_token(s, alice, "tests", created_by="pytest")
        _, viewer_token = create_token(s, victor, "tests", created_by="pytest")
    server = AdminServerThread(settings, db)
    server.start()
    wait_until(lambda: server.started or not server.is_alive(), 30, "the admin app to start")
    assert server.started, "the admin app did not start"
    yield AdminApp(f"http://127.0.0.1:{settings.admin_port}", settings, db, admin_token, viewer_token)
    server.stop()
    server.join(15)
    db.dispose()


# --- STOW-RS input: a local AE and a sender's token on its allow-list -------------------------

STOW_AE = "CTSTOW"


@pytest.fixture
def stow(admin_app: AdminApp) -> Iterator[tuple[AdminApp, str, int]]:
    """The app with a local AE (:data:`STOW_AE`) that allows one token of a ``sender`` user:
    (app, token, token id)."""
    with admin_app.db.session() as s:
        scanner = User(name="scanner", role="sender", password_hash=password_hash(), enabled=True)
        s.add(scanner)
        s.flush()
        row, token = create_token(s, scanner, "stow", created_by="pytest")
        c.add_local_ae(
            s,
            c.parse(c.LocalAEIn, {"title": STOW_AE, "port": 11190, "quiet_seconds": 1, "stow_tokens": [row.id]}),
            admin_app.settings.completion,
        )
        token_id = row.id
    yield admin_app, token, token_id


# --- a finished job, written as the worker writes one (dicom_node.storage.results) ------------------


def write_sc(path: Path, rgb: np.ndarray, seed: str) -> str:
    """A secondary capture with RGB pixels (what the worker's SC writer sends to PACS)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = derived_uid(seed, "sc")
    ds.StudyInstanceUID = derived_uid(seed, "study")
    ds.SeriesInstanceUID = derived_uid(seed, "sc-series")
    ds.Modality = "OT"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def finished_job(
    app: AdminApp, *, status: JobStatus = JobStatus.DONE, seed: str = "admin-job"
) -> tuple[int, int, np.ndarray]:
    """A series with a done job, one SC picture in the results dir and one export; returns
    (series id, job id, the picture's pixels)."""
    now = utcnow()
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(48, dtype=np.uint8)[None, :] * 5
    rgb[..., 1] = np.arange(32, dtype=np.uint8)[:, None] * 7
    rgb[8:16, 8:24, 2] = 255
    with app.db.session() as s:
        series = Series(
            series_uid=derived_uid(seed, "series"),
            study_uid=derived_uid(seed, "study"),
            calling_ae="CT1",
            patient_id="PAT1",
            modality="CT",
            series_description="CHEST",
            instances=20,
            frames=20,
            status=SeriesStatus.COMPLETE.value,
            completed_at=now,
        )
        s.add(series)
        s.flush()
        job = Job(
            series_id=series.id,
            status=status.value,
            decision="covid",
            model_name="cam-net",
            model_version="0.1",
            result={
                "probabilities": {"covid": 0.8, "cap": 0.15, "normal": 0.05},
                "decision": "covid",
                "reason": "test",
            },
            timings={"load": 0.5, "inference": 2.5, "encoding": 0.3},
            started_at=now,
            finished_at=now,
        )
        s.add(job)
        s.flush()
        relative = f"{job.id}/dicom/sc/{derived_uid(seed, 'sc')}.dcm"
        uid = write_sc(app.settings.results_dir / relative, rgb, seed)
        job.outputs = [
            {
                "kind": "sc",
                "sop_class_uid": SecondaryCaptureImageStorage,
                "sop_instance_uid": uid,
                "series_uid": "",
                "path": relative,
            }
        ]
        s.add(
            Export(
                job_id=job.id,
                destination_key="dest:none",
                title="PACS",
                host="127.0.0.1",
                port=104,
                outputs=["sc"],
                status=ExportStatus.DONE.value,
                attempts=1,
                objects_sent=1,
                finished_at=now,
            )
        )
        return series.id, job.id, rgb


# --- the worklist: a radiologist, the viewer link, studies of a given priority and suspicion ----

VIEWER_URL = "http://viewer.test/viewer?StudyInstanceUIDs={study_uid}"


@pytest.fixture
def radiologist_app(admin_app: AdminApp) -> Iterator[tuple[AdminApp, str]]:
    """The admin app with a radiologist (and their token) and the viewer link set."""
    admin_app.settings.triage.viewer_url = VIEWER_URL
    with admin_app.db.session() as s:
        rita = User(name=RADIOLOGIST, role="radiologist", password_hash=password_hash(), enabled=True)
        s.add(rita)
        s.flush()
        _, token = create_token(s, rita, "tests", created_by="pytest")
    yield admin_app, token


def study(
    app: AdminApp, seed: str, *, priority: Priority, p_normal: float, minutes_ago: float, decision: str = "covid"
) -> int:
    """A finished job (with its heatmap picture) of the given priority, p(normal) and wait."""
    _, job_id, _ = finished_job(app, seed=seed)
    with app.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.priority = int(priority)
        job.decision = decision
        rest = (1 - p_normal) / 2
        job.result = {**(job.result or {}), "probabilities": {"covid": rest, "cap": rest, "normal": p_normal}}
        series = s.get(Series, job.series_id)
        assert series is not None
        series.last_received_at = utcnow() - dt.timedelta(minutes=minutes_ago)
        series.accession_number = f"ACC-{seed}"
    return job_id


# --- a running node (dicom-node serve / up as a subprocess) ---------------------------------


@dataclass
class LiveNode:
    env: dict[str, str]
    process: NodeProcess
    url: str
    token: str
    data_dir: Path

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)


def start_live_node(data_dir: Path, command: tuple[str, ...] = ("serve",), **settings: Any) -> LiveNode:
    """The node as a subprocess with its admin app on a free port, an admin user made with
    ``dicom-node admin create-user`` and an API token made with ``create-token``."""
    port = free_port()
    env = node_env(data_dir, admin_port=port, listener__processes=1, completion__poll_seconds=0.2, **settings)
    cli(env, "admin", "create-user", ADMIN, "--role", "admin", "--password-stdin", input=PASSWORD + "\n")
    token = cli(env, "admin", "create-token", ADMIN, "--name", "tests").stdout.strip()
    process = NodeProcess(env, command).start()
    try:
        process.wait_for_port(port, timeout=90)
    except AssertionError:
        process.stop()
        raise
    return LiveNode(env, process, f"http://127.0.0.1:{port}", token, data_dir)


@pytest.fixture
def live_node(tmp_path: Path) -> Iterator[LiveNode]:
    node = start_live_node(tmp_path / "node-data")
    yield node
    node.process.stop()


# --- headless Chromium (Debian's chromium and chromedriver, driven by selenium) ------------------

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "admin-browser"


@pytest.fixture
def browser(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    driver = headless_chromium(tmp_path / "chromium-profile", window="1280,1100", flags=("--disable-gpu",))
    yield driver
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / f"failed-{request.node.name}.png"))
        (ARTIFACTS / f"failed-{request.node.name}.html").write_text(driver.page_source)
    driver.quit()


class Pages:
    """The steps a person takes, with a screenshot after each."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    def wait(self, condition: Any, timeout: float = 20) -> Any:
        # The lists re-fill themselves every few seconds: an element found just before may be gone.
        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)

    def cells(self, row_selector: str) -> dict[str, str] | None:
        """The texts of one table row's cells by their column's header, read at once (the row may be
        replaced any time; columns may be added)."""
        script = (
            "const r = document.querySelector(arguments[0]);"
            " if (!r) return null;"
            " const heads = Array.from(r.closest('table').tHead.rows[0].cells).map(c => c.textContent.trim());"
            " return Object.fromEntries(Array.from(r.cells).map((c, i) => [heads[i], c.textContent.trim()]));"
        )
        found: dict[str, str] | None = self.driver.execute_script(script, row_selector)
        return found

    def column(self, row_selector: str, header: str) -> dict[str, Any] | None:
        """One cell of a table row, found by its column's header (the header's text starts with
        ``header``): its text and the links in it, read at once; None without that row or column."""
        script = """
            const r = document.querySelector(arguments[0]);
            if (!r) return null;
            const heads = Array.from(r.closest('table').tHead.rows[0].cells);
            const i = heads.findIndex(h => h.textContent.trim().startsWith(arguments[1]));
            if (i < 0 || i >= r.cells.length) return null;
            const c = r.cells[i];
            return {text: c.textContent.trim(), links: Array.from(c.querySelectorAll('a')).map(a => a.href)};
        """
        found: dict[str, Any] | None = self.driver.execute_script(script, row_selector, header)
        return found

    def rows(self, body_selector: str, attribute: str) -> list[str]:
        """The ``attribute`` of each row of a table body, top to bottom."""
        script = (
            "return Array.from(document.querySelectorAll(arguments[0] + ' > tr'))"
            ".map(r => r.getAttribute(arguments[1]));"
        )
        found: list[str] = [v for v in self.driver.execute_script(script, body_selector, attribute) if v is not None]
        return found

    def by_id(self, element_id: str) -> Any:
        return self.driver.find_element(By.ID, element_id)

    def fill(self, values: dict[str, str]) -> None:
        for element_id, value in values.items():
            field = self.by_id(element_id)
            field.clear()
            field.send_keys(value)

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item, so that a fixture can see whether the test
    failed (the browser fixture saves a screenshot of the page it failed on)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]  # a hookwrapper's yield gives pluggy's Result, typed None here
    setattr(item, f"report_{report.when}", report)
