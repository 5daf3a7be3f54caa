"""End-to-end fixtures: `runwire serve` as a real subprocess, driven by headless Chromium.

The browser is Debian's Chromium (`apt-get install chromium`), launched by Playwright for
Python; Playwright never downloads a browser of its own here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import CHROMIUM, CHROMIUM_ARGS, Server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "runwire.db", tmp_path / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


# Module scope, not session: sync Playwright runs an event loop of its own in this thread
# while it is open, and pytest-asyncio cannot run the async tests of later modules beside it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the e2e tests need Debian's Chromium "
            "(apt-get install -y chromium), or RUNWIRE_CHROMIUM=/path/to/chromium",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: pip install -e '.[dev]' (it needs no "
            "browser download: the tests use the system Chromium)",
            pytrace=False,
        )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1200, "height": 760})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()
