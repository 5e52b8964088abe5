"""External programs some tests need (Chromium, poppler-utils), installed by ``make test``."""

from __future__ import annotations

import os
import shutil

import pytest

from notifier.notebook.archive import find_browser

INSTALL = "make test installs them (as root, with apt-get): apt-get install chromium poppler-utils"


def need(*programs: str) -> None:
    """Skip the test when a program is missing; under CI (CI=true) fail instead."""
    missing = [p for p in programs if not shutil.which(p)]
    if missing:
        message = f"needs {', '.join(missing)}; {INSTALL}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)


def need_browser() -> str:
    """The Chromium/Chrome executable, or skip (fail under CI) when there is none."""
    browser = find_browser()
    if browser is None:
        message = f"needs Chromium or Chrome; {INSTALL}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return browser
