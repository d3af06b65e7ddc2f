"""The real-time panel of the Live Data page's group cards, on a real demo server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, start_demo, stop

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server of its own, two machines."""
    server = start_demo(tmp_path_factory.mktemp("realtime-demo"), "--machines", "2")
    yield server
    stop(server)


def states(page) -> list[str]:
    return page.page.eval_on_selector_all(".rt-state", "els => els.map(e => e.textContent)")


def test_group_panel_shows_status_and_buttons_change_it(server: Server, live_page) -> None:
    """Every group card shows 🟢/🔴 and Stop/Start switch the machine, with an overlay when off."""
    page = live_page(server).open()
    page.wait_for(
        lambda: (s := states(page)) and all("Real-Time is running" in t for t in s),
        timeout=10,
        what="running status on every card",
    )
    assert len(states(page)) == 5
    page.page.locator(".rt-stop").first.click()
    page.wait_for(
        lambda: all("Real-Time is stopped" in t for t in states(page)),
        timeout=10,
        what="stopped status",
    )
    assert page.page.locator(".rt-overlay").count() == 5
    assert page.page.locator(".rt-stop").first.is_disabled()
    page.screenshot("realtime-stopped")
    chassis = page.page.eval_on_selector("#machine-select", "e => e.value")
    log = httpx.get(
        f"{server.url}/api/iothubs/demo/devices/{chassis}/methods", headers=server.headers
    ).json()
    assert log["commands"][0]["methodName"] == "endMs"
    page.page.locator(".rt-start").nth(2).click()
    page.wait_for(
        lambda: all("Real-Time is running" in t for t in states(page)),
        timeout=10,
        what="running again",
    )
    assert page.page.locator(".rt-overlay").count() == 0
    page.screenshot("realtime-running")
    page.assert_clean()


def test_status_changed_elsewhere_is_pushed_to_the_page(server: Server, live_page) -> None:
    """A Stop sent through the API by someone else turns the open page 🔴 without a reload."""
    page = live_page(server).open()
    page.wait_for(
        lambda: (s := states(page)) and all("Real-Time is running" in t for t in s),
        timeout=10,
        what="running status on every card",
    )
    chassis = page.page.eval_on_selector("#machine-select", "e => e.value")
    url = f"{server.url}/api/iothubs/demo/devices/{chassis}/methods"
    stopped = httpx.post(url, json={"methodName": "endMs"}, headers=server.headers)
    assert stopped.json()["payload"]["realtime"] == "off"
    try:
        # the page polls only every 30 s: a change within 5 s came over the status stream
        page.wait_for(
            lambda: all("Real-Time is stopped" in t for t in states(page)),
            timeout=5,
            what="stopped status pushed",
        )
    finally:
        httpx.post(url, json={"methodName": "startMs"}, headers=server.headers)
    page.wait_for(
        lambda: all("Real-Time is running" in t for t in states(page)),
        timeout=5,
        what="running status pushed",
    )
    page.assert_clean()
