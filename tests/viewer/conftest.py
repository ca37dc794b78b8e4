"""The browser the viewer tests drive: headless Chromium (Debian packages chromium and
chromium-driver) through selenium, one per test module, its screenshots in CSS pixels."""

from __future__ import annotations

from typing import Iterator

import pytest
from selenium import webdriver

from tests.harness.browser import headless_chromium
from tests.viewer.studies import ARTIFACTS


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    driver = headless_chromium(
        tmp_path_factory.mktemp("chromium-profile"),
        window="1400,900",
        flags=(
            "--force-device-scale-factor=1",  # screenshot pixels are canvas (CSS) pixels
            "--enable-unsafe-swiftshader",  # WebGL in software (OHIF renders with it)
        ),
        capabilities={"goog:loggingPrefs": {"browser": "ALL"}},
    )
    driver.set_script_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
