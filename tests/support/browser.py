"""Headless Chromium through Selenium and Debian's chromium-driver, for the dashboard tests.

``make test`` installs ``chromium`` and ``chromium-driver`` with apt-get when it runs as root;
elsewhere the browser tests are skipped with a note, except under CI=true, where a missing
browser fails them (a green CI must not hide a missing install step).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> tuple[str | None, str | None]:
    """(browser binary, chromedriver binary), either None when missing."""
    browser = os.environ.get("NOTIFIER_BROWSER") or next(
        (found for name in BROWSERS if (found := shutil.which(name))), None
    )
    return browser, shutil.which("chromedriver")


def require_browser() -> tuple[str, str]:
    """Both binaries, or skip (fail under CI) with the command that installs them."""
    browser, driver = find_browser()
    if browser and driver:
        return browser, driver
    missing = " and ".join(
        n for n, v in (("chromium", browser), ("chromium-driver", driver)) if not v
    )
    message = f"{missing} not installed: `apt-get install chromium chromium-driver` (make test does it as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def chrome(width: int = 1400, height: int = 1000):  # noqa: ANN201 - selenium's WebDriver
    """A headless Chromium driven by chromium-driver (no Selenium Manager download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(flag)
    driver_ = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    driver_.set_page_load_timeout(60)
    driver_.set_script_timeout(30)
    return driver_


def screenshot(driver, folder: Path, name: str, *, full_page: bool = True) -> Path:  # noqa: ANN001
    """Save a PNG of the page (the whole height, up to 4000 px) to ``folder``/name.png."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.get_window_size()["width"]
        driver.set_window_size(width, min(max(int(height) + 120, 600), 4000))
    driver.save_screenshot(str(path))
    target = os.environ.get("NOTIFIER_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path
