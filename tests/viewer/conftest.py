"""The browser the viewer tests drive: headless Chromium (Debian packages chromium and
chromium-driver) through selenium, one per test module, its screenshots in CSS pixels."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tests.harness.peers import require_tool
from tests.viewer.studies import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


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
        "--force-device-scale-factor=1",  # screenshot pixels are canvas (CSS) pixels
        "--enable-unsafe-swiftshader",  # WebGL in software (OHIF renders with it)
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
