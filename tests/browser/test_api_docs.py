"""The API documentation in Chromium with the network off: served from the package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Server, start_demo, stop


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server with one machine."""
    server = start_demo(tmp_path_factory.mktemp("docs"), "--machines", "1")
    yield server
    stop(server)


def offline_page(browser: Any, server: Server) -> tuple[Any, list[str]]:
    """A page whose every request off the server's host is refused (and recorded)."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    refused: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(server.url) or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort("internetdisconnected")

    context.route("**/*", route)
    return context.new_page(), refused


def test_swagger_ui_lists_operations_offline(browser: Any, server: Server, artifacts: Any) -> None:
    """/docs renders with no internet: the machine registry's operations are listed."""
    page, refused = offline_page(browser, server)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
    assert "/api/resources/{orgId}/machines/import" in [p.replace("\u200b", "") for p in paths]
    assert len(paths) > 30
    page.screenshot(path=str(artifacts / "docs-swagger-1360.png"))
    assert refused == [] and errors == []
    page.context.close()


def test_redoc_lists_operations_offline(browser: Any, server: Server) -> None:
    """/redoc renders with no internet and lists the operations by summary."""
    page, refused = offline_page(browser, server)
    page.goto(f"{server.url}/redoc")
    page.wait_for_selector("h2:has-text('Register a machine')", timeout=30_000)
    assert page.locator("h2:has-text('Create or update machines from CSV')").count() == 1
    assert refused == []
    page.context.close()
