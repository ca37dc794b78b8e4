"""Headless Chromium (Debian packages chromium and chromium-driver) driven by selenium: the one
start of it for the admin-page and viewer tests, which add their own flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from tests.harness.peers import require_tool

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(
    profile: Path, *, window: str, flags: Sequence[str] = (), capabilities: dict[str, Any] | None = None
) -> webdriver.Chrome:
    """A headless Chromium with its profile in ``profile``, a window of ``window`` ("W,H"), the
    extra command-line ``flags`` and ``capabilities``; pages get 60 s to load."""
    require_tool("chromium", "chromium")
    require_tool("chromedriver", "chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={window}",
        f"--user-data-dir={profile}", *flags,
    ):  # fmt: skip
        options.add_argument(arg)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver
