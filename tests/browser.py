"""A real browser for tests: Playwright driving Debian's Chromium (``apt-get install
chromium``); Playwright's own browser downloads are not used."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The screenshots in docs/ are refreshed with CRYPTON_UPDATE_SCREENSHOTS=1; otherwise a
# run leaves the checkout as it found it and writes them to a temporary directory.
SHOTS = (
    Path(__file__).parents[1] / "docs"
    if os.environ.get("CRYPTON_UPDATE_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "crypton-screenshots"
)
SHOTS.mkdir(parents=True, exist_ok=True)


@contextmanager
def chromium_page(width: int = 1440, height: int = 980) -> Iterator[Any]:
    """A Playwright ``Page`` in headless Chromium; skips the test if Chromium is absent."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is missing: apt-get install -y chromium")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI runs as root; --disable-dev-shm-usage: small /dev/shm in containers.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()
