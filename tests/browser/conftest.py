"""Playwright on Debian's Chromium, and a small driver for the Live Data page.

Fixtures:

- ``browser``: one headless Chromium per test module (fails when /usr/bin/chromium
  is missing; Playwright's own browser download is never used). Module scope, not
  session: while Playwright's sync API is active it holds the main thread's event
  loop, and the asyncio tests of later modules could not run.
- ``live_page``: a factory ``live_page(server_or_url) -> LivePage``; given a
  :class:`tests.conftest.Server` the page's browser context is logged in first as the
  demo's admin (the password ``livedata demo`` printed), or as ``user``/``password``;
  given a bare URL (a stand-in gateway without accounts) it is not. Each page records
  console errors, uncaught exceptions and every request or WebSocket that leaves the
  server's host, so a test can assert the page stayed clean and local.
- :func:`login`: log a browser context in through ``POST /api/auth/login``; the
  context's request client shares its cookie jar with the pages.
- ``artifacts``: the git-ignored ``test-artifacts/`` directory for screenshots.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Server

playwright_sync = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
STATIC_DIR = ROOT / "src" / "livedata" / "web" / "static"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DEMO_ADMIN = "admin"
"""The user ``livedata demo`` creates; its password is ``Server.password``."""


def login(context: Any, base_url: str, username: str, password: str) -> dict[str, Any]:
    """Log ``context`` in (session and CSRF cookies); the login's JSON body."""
    response = context.request.post(
        f"{base_url.rstrip('/')}/api/auth/login",
        data={"username": username, "password": password},
    )
    assert response.ok, f"login as {username} failed: {response.status} {response.text()}"
    return response.json()


def admin_password(server: Server) -> str:
    """The demo admin's password; a server restarted on its data keeps the first one."""
    assert server.password, "the demo printed no password (started on an existing data dir?)"
    return server.password


# Reads, in the page, the points each chart holds: {group name: {field: n}}.
# Gap markers ([ts, null]) are not points.
_POINT_COUNTS_JS = """() => {
  const out = {};
  for (const card of document.querySelectorAll('.card')) {
    const chart = echarts.getInstanceByDom(card.querySelector('.chart'));
    const name = card.querySelector('h2').textContent;
    out[name] = {};
    for (const s of chart.getOption().series) {
      out[name][s.name] = s.data.filter((p) => p[1] != null).length;
    }
  }
  return out;
}"""

_SERIES_JS = """([group, field]) => {
  for (const card of document.querySelectorAll('.card')) {
    if (card.querySelector('h2').textContent !== group) continue;
    const chart = echarts.getInstanceByDom(card.querySelector('.chart'));
    const series = chart.getOption().series.find((s) => s.name === field);
    return series ? series.data.filter((p) => p[1] != null) : null;
  }
  return null;
}"""


class LivePage:
    """The Live Data page in one browser tab, with what it logged and requested."""

    def __init__(self, page, base_url: str, artifacts: Path) -> None:
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.artifacts = artifacts
        self.console_errors: list[str] = []
        self.foreign_requests: list[str] = []
        host = urlsplit(self.base_url).netloc
        local_hosts = {host}

        def check_url(url: str) -> None:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                return
            if parts.netloc not in local_hosts:
                self.foreign_requests.append(url)

        page.on("request", lambda request: check_url(request.url))
        page.on("websocket", lambda ws: check_url(ws.url))
        page.on(
            "console",
            lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))

    def open(self, query: str = "") -> LivePage:
        """Load the page and wait until the chart list (or empty state) is rendered."""
        self.page.goto(f"{self.base_url}/{query}")
        self.page.wait_for_function(
            "document.querySelector('.card .chart canvas')"
            " || !document.querySelector('#empty-state').hidden"
        )
        return self

    def point_counts(self) -> dict[str, dict[str, int]]:
        """Points drawn per chart and series: {group name: {field: count}}."""
        return self.page.evaluate(_POINT_COUNTS_JS)

    def series(self, group: str, field: str) -> list[list[float]] | None:
        """The [ts, value] points of one series of one group's chart."""
        return self.page.evaluate(_SERIES_JS, [group, field])

    def connection_state(self, msg_type: str) -> str | None:
        """'live', 'connecting', 'reconnecting' or 'offline' for a message type's socket."""
        chip = self.page.locator(f'.conn[data-msg-type="{msg_type}"]')
        return chip.get_attribute("data-state") if chip.count() else None

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        """Poll a Python-side predicate (e.g. on point_counts()) until true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
            self.page.wait_for_timeout(200)

    def screenshot(self, name: str) -> Path:
        """The whole page, from the top (a sticky header would otherwise land mid-page)."""
        path = self.artifacts / f"{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self, allow: tuple[str, ...] = ()) -> None:
        """No console error (but those matching a regex in `allow`) and nothing non-local fetched."""
        errors = [e for e in self.console_errors if not any(re.search(a, e) for a in allow)]
        assert errors == [], f"console errors: {errors}"
        assert self.foreign_requests == [], f"requests left the host: {self.foreign_requests}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is not installed: run scripts/setup.sh --test")
    if not (STATIC_DIR / "vendor" / "echarts.min.js").is_file():
        pytest.fail("ECharts is not vendored: run `npm ci && npm run build` first")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def live_page(browser, artifacts) -> Iterator[Callable[..., LivePage]]:
    contexts = []

    def open_page(
        target: Server | str,
        user: str = DEMO_ADMIN,
        password: str | None = None,
        viewport: tuple[int, int] = (1360, 900),
    ) -> LivePage:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        if isinstance(target, str):
            base_url = target
        else:
            base_url = target.url
            login(context, base_url, user, password or admin_password(target))
        return LivePage(context.new_page(), base_url, artifacts)

    yield open_page
    for context in contexts:
        context.close()
