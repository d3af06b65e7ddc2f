"""The fleet dashboard and the alert rules page on a real demo server, in Chromium."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from livedata.metadata import Metadata
from tests.browser.conftest import DEMO_ADMIN, admin_password, login
from tests.conftest import Server, start_demo, stop

pytestmark = pytest.mark.browser

ORG = "demo"
SILENT = "WL-0003"
"""A machine in the metadata that the demo's fleet (2 machines) does not simulate."""

GAUGES_JS = """(chassis) => {
  const el = document.querySelector(`.machine[data-chassis="${chassis}"] .gauges`);
  const series = echarts.getInstanceByDom(el).getOption().series;
  return series.map((s) => ({name: s.name, value: s.data[0].value, bands: s.axisLine.lineStyle.color}));
}"""
MAP_JS = (
    """() => [...document.querySelectorAll('#map .machine-marker')].map((m) => m.dataset.chassis)"""
)
UNREACHABLE_TILES = "http://127.0.0.1:9/{z}/{x}/{y}.png"
"""Port 9 (discard): Chromium refuses it outright (ERR_UNSAFE_PORT), and nothing listens on it
here anyway, so every tile request fails, as with no tile server reachable."""
TILE_URL = re.compile(r"http://127\.0\.0\.1:9/\d+/\d+/\d+\.png")
FAILED_LOAD = r"^Failed to load resource: net::ERR_(UNSAFE_PORT|CONNECTION_REFUSED)$"


async def _seed_silent_machine(data_dir: Path) -> None:
    meta = Metadata(f"sqlite:///{data_dir / 'metadata.db'}")
    await meta.start()
    await meta.ensure_org(ORG, "Demo fleet")
    await meta.upsert_machine(ORG, SILENT, "Wheel loader 3", "WL")
    await meta.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo of 2 simulated machines plus one that sends only what the test writes."""
    data_dir = Path(tmp_path_factory.mktemp("fleet-demo"))
    asyncio.run(_seed_silent_machine(data_dir))
    demo = start_demo(data_dir, "--machines", "2")
    with httpx.Client(base_url=demo.url, headers=demo.headers) as http:
        rule = {
            "name": "Engine overspeed",
            "msgType": "vehicle_can",
            "field": "engine_rpm",
            "condition": ">",
            "threshold": 2500,
            "severity": "critical",
        }
        assert http.post(f"/api/resources/{ORG}/alert-rules", json=rule).status_code == 201
    yield demo
    stop(demo)


class Tab:
    """One page in its own browser context, logged in as the demo's admin, recording console
    errors and foreign requests."""

    def __init__(self, browser, server: Server, width: int, height: int) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        base_url = server.url
        login(self.context, base_url, DEMO_ADMIN, admin_password(server))
        self.page = self.context.new_page()
        self.base_url = base_url
        self.errors: list[str] = []
        self.foreign: list[str] = []
        host = urlsplit(base_url).netloc
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

        def check(url: str) -> None:
            if (
                urlsplit(url).scheme in ("http", "https", "ws", "wss")
                and urlsplit(url).netloc != host
            ):
                self.foreign.append(url)

        self.page.on("request", lambda r: check(r.url))
        self.page.on("websocket", lambda ws: check(ws.url))

    def open_fleet(self) -> Tab:
        self.page.goto(f"{self.base_url}/static/fleet.html")
        self.page.wait_for_selector(".machine .gauges canvas")
        self.page.wait_for_selector('#updates[data-state="live"]', timeout=5000)
        return self

    def status(self, chassis: str) -> str:
        return self.page.locator(f'.machine[data-chassis="{chassis}"] .status-pill').inner_text()

    def assert_clean(self, allow: str | None = None) -> None:
        errors = [e for e in self.errors if not (allow and re.search(allow, e))]
        assert errors == [], errors
        assert self.foreign == [], self.foreign

    def close(self) -> None:
        self.context.close()


def write(server: Server, name: str, value: float) -> None:
    now = int(time.time() * 1000)
    body = {"data": {"rows": [[name, now, value]]}}
    response = httpx.post(
        f"{server.url}/db/write/client_raw_data",
        params={"timeformat": "ms"},
        json=body,
        headers=server.headers,
    )
    assert response.status_code == 200, response.text


def test_dashboard_statuses_and_gauges_change_live(server: Server, browser, artifacts) -> None:
    """At 1360×900 every machine is listed with its status, gauges with the rule's band move
    live, each simulated machine shows its count of active DTCs, a silent machine turns
    online when it sends and offline 5 s after, positions are drawn; at 390×844 the page
    fits the screen."""
    tab = Tab(browser, server, 1360, 900).open_fleet()
    page = tab.page
    try:
        chassis = [c.get_attribute("data-chassis") for c in page.locator(".machine").all()]
        assert chassis == [*server.machines, SILENT]
        page.wait_for_function(
            "document.querySelectorAll('.status-pill[data-status=online]').length == 2"
        )
        assert tab.status(SILENT) == "offline"
        assert (
            page.locator(f'.machine[data-chassis="{SILENT}"] .realtime').inner_text() == "unknown"
        )
        page.wait_for_function(  # asked with getStatus in the background, then refreshed
            f"document.querySelector('.machine[data-chassis=\"{server.machines[0]}\"] .realtime')"
            ".textContent == 'on'",
            timeout=15_000,
        )

        page.wait_for_function(  # the loader's DM1 says how many DTCs are active (often 0)
            f'/^\\d+$/.test(document.querySelector(\'.machine[data-chassis="{server.machines[0]}"]'
            " .dtc-count').textContent)",
            timeout=5000,
        )
        assert page.locator(f'.machine[data-chassis="{SILENT}"] .dtc-count').inner_text() == "–"

        first = page.evaluate(GAUGES_JS, server.machines[0])
        assert [g["name"] for g in first] == ["engine_rpm", "coolant_temp", "fuel_level"]
        rpm_bands = first[0]["bands"]
        assert [round(stop[0], 4) for stop in rpm_bands] == [round(2500 / 3000, 4), 1]
        assert rpm_bands[-1][1] == "#dc2626"  # critical above the threshold
        assert all(isinstance(g["value"], int | float) for g in first)
        deadline = time.monotonic() + 5
        while page.evaluate(GAUGES_JS, server.machines[0])[0]["value"] == first[0]["value"]:
            assert time.monotonic() < deadline, "the engine_rpm gauge did not move"
            page.wait_for_timeout(200)
        page.wait_for_function(
            f"({MAP_JS})().length == 2", timeout=5000
        )  # the silent machine has no GPS yet

        for _ in range(6):  # the silent machine sends for 3 s
            write(server, f"{SILENT}.cpu_usage", 42.5)
            page.wait_for_timeout(500)
        assert tab.status(SILENT) == "online"
        cpu_seen = page.locator(f'.machine[data-chassis="{SILENT}"] .last-seen').inner_text()
        assert re.fullmatch(r"now|\d s ago", cpu_seen), cpu_seen
        tab.page.screenshot(path=str(artifacts / "fleet-desktop.png"), full_page=True)
        page.wait_for_function(
            f"document.querySelector('.machine[data-chassis=\"{SILENT}\"] .status-pill')"
            ".dataset.status == 'offline'",
            timeout=9000,
        )
        tab.assert_clean()
    finally:
        tab.close()

    phone = Tab(browser, server, 390, 844).open_fleet()
    try:
        phone.page.wait_for_function(f"({MAP_JS})().length == 2", timeout=5000)
        width = phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen"
        boxes = [
            phone.page.locator(sel).first.bounding_box()
            for sel in (".alerts-panel", ".machine", ".map-panel")
        ]
        assert all(b is not None and b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes)
        assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"], "alerts, then machines, then map"
        phone.page.screenshot(path=str(artifacts / "fleet-phone.png"), full_page=True)
        phone.assert_clean()
    finally:
        phone.close()


def test_alert_shows_within_2s_and_is_acknowledged_in_the_ui(
    server: Server, browser, artifacts
) -> None:
    """A value over a rule's threshold shows as an alert on the open page within 2 s with its
    severity; it is acknowledged from the page with a comment; it leaves when it clears."""
    with httpx.Client(base_url=server.url, headers=server.headers) as http:
        rule = {
            "name": "UI load",
            "msgType": "client_raw_data",
            "field": "ui_load",
            "condition": ">",
            "threshold": 10,
            "severity": "critical",
        }
        assert http.post(f"/api/resources/{ORG}/alert-rules", json=rule).status_code == 201
    tab = Tab(browser, server, 1360, 900).open_fleet()
    page = tab.page
    chassis = server.machines[1]
    try:
        started = time.monotonic()
        write(server, f"{chassis}.ui_load", 20)
        item = page.locator(".alert-item", has_text="UI load")
        item.wait_for(timeout=2000)
        assert time.monotonic() - started < 2.0
        assert item.get_attribute("data-severity") == "critical"
        assert chassis in item.inner_text()
        assert page.locator("#stat-critical").inner_text() == "1"
        page.screenshot(path=str(artifacts / "fleet-alert.png"), full_page=True)

        item.get_by_role("button", name="Acknowledge").click()
        page.locator("#ack-form textarea").fill("Checked on site")
        page.locator("#ack-form").get_by_role("button", name="Acknowledge").click()
        page.locator("#ack-dialog").wait_for(state="hidden")
        page.locator(".alert-item .alert-ack", has_text=f"Acknowledged by {DEMO_ADMIN}").wait_for()
        assert item.get_by_role("button", name="Acknowledge").count() == 0
        alerts = httpx.get(
            f"{server.url}/api/resources/{ORG}/alerts?state=active", headers=server.headers
        ).json()
        mine = [a for a in alerts["alerts"] if a["ruleName"] == "UI load"]
        assert [(a["acknowledgedBy"], a["comment"]) for a in mine] == [
            (DEMO_ADMIN, "Checked on site")
        ]
        page.screenshot(path=str(artifacts / "fleet-alert-acknowledged.png"), full_page=True)

        write(server, f"{chassis}.ui_load", 1)
        item.wait_for(state="detached", timeout=3000)
        tab.assert_clean()
    finally:
        tab.close()


def test_rules_page_shows_why_a_rule_is_refused(server: Server, browser, artifacts) -> None:
    """The rules form shows the server's reason for an invalid rule, saves a valid one into the
    table and deletes it again."""
    tab = Tab(browser, server, 1360, 900)
    page = tab.page
    try:
        page.goto(f"{server.url}/static/alerts.html")
        page.locator("#rules-body tr").first.wait_for()
        page.get_by_role("button", name="Add rule").click()
        form = page.locator("#rule-form")
        form.locator("input[name=name]").fill("RPM band")
        form.locator("input[name=field]").fill("engine_rpm")
        form.locator("select[name=condition]").select_option("outside")
        form.locator("input[name=threshold]").fill("2000")
        form.locator("input[name=thresholdHigh]").fill("600")
        form.get_by_role("button", name="Save").click()
        error = page.locator("#rule-error")
        error.wait_for()
        assert "outside needs low < high" in error.inner_text()
        page.screenshot(path=str(artifacts / "alert-rules-error.png"))
        form.locator("input[name=threshold]").fill("600")
        form.locator("input[name=thresholdHigh]").fill("2000")
        form.get_by_role("button", name="Save").click()
        page.locator("#rule-dialog").wait_for(state="hidden")
        row = page.locator("#rules-body tr", has_text="RPM band")
        assert "engine_rpm outside 600..2000" in row.inner_text()
        page.screenshot(path=str(artifacts / "alert-rules.png"), full_page=True)
        row.get_by_role("button", name="Delete").click()
        page.locator("#delete-form").get_by_role("button", name="Delete").click()
        row.wait_for(state="detached")
        names = [
            r["name"]
            for r in httpx.get(
                f"{server.url}/api/resources/{ORG}/alert-rules", headers=server.headers
            ).json()["rules"]
        ]
        assert "RPM band" not in names
        tab.assert_clean(allow=r"status of 400 \(Bad Request\)")  # the refused rule
    finally:
        tab.close()


MAP_STATE_JS = """() => {
  const map = document.querySelector('#map').getBoundingClientRect();
  const markers = [...document.querySelectorAll('#map .machine-marker')].map((m) => {
    const r = m.querySelector('.pin').getBoundingClientRect();
    const inside = r.left >= map.left && r.right <= map.right && r.top >= map.top
      && r.bottom <= map.bottom;
    return {chassis: m.dataset.chassis, status: m.dataset.status, inside,
            x: r.left + r.width / 2, y: r.top + r.height / 2,
            label: m.querySelector('.pin-label').textContent,
            color: getComputedStyle(m.querySelector('.pin')).backgroundColor};
  });
  return {
    markers,
    tiles: document.querySelectorAll('#map img.leaflet-tile').length,
    trails: document.querySelectorAll('#map .leaflet-overlay-pane path').length,
    gridLines: document.querySelectorAll('#map .graticule .grid-line').length,
    gridLabels: document.querySelectorAll('#map .graticule .grid-label').length,
    scale: document.querySelector('#map .leaflet-control-scale-line')?.textContent ?? null,
    note: document.querySelector('#map .map-note').hidden
      ? null : document.querySelector('#map .map-note').textContent,
    attribution: document.querySelector('#map .leaflet-control-attribution')?.textContent ?? null,
    tileState: document.querySelector('#map').dataset.tiles,
  };
}"""


def _wait_for_markers(page, machines: list[str]) -> dict:
    page.wait_for_function(f"({MAP_JS})().length == {len(machines)}", timeout=5000)
    state = page.evaluate(MAP_STATE_JS)
    assert sorted(m["chassis"] for m in state["markers"]) == sorted(machines)
    assert all(m["inside"] for m in state["markers"]), state["markers"]
    assert [m["label"] for m in state["markers"]] == [m["chassis"] for m in state["markers"]]
    return state


def test_map_shows_positions_without_a_tile_server(server: Server, browser, artifacts) -> None:
    """With no tile server configured the map draws no tiles but the machines' markers,
    fitted into view, with trails, a graticule and a scale; the markers move live and a
    marker's popup names the machine and when it was last seen."""
    assert httpx.get(f"{server.url}/api/resources/{ORG}/fleet", headers=server.headers).json()[
        "map"
    ] == {
        "tiles": "",
        "attribution": "",
    }
    tab = Tab(browser, server, 1360, 900).open_fleet()
    page = tab.page
    try:
        state = _wait_for_markers(page, server.machines)
        assert state["tiles"] == 0 and state["tileState"] == "none"
        assert state["gridLines"] >= 4 and state["gridLabels"] >= 2, state
        assert state["scale"] and re.fullmatch(r"\d+ k?m", state["scale"]), state["scale"]
        assert state["note"] is None and state["attribution"] is None
        assert all(m["color"] == "rgb(22, 163, 74)" for m in state["markers"])  # online, no alert
        page.wait_for_function(
            "document.querySelectorAll('#map .leaflet-overlay-pane path').length == 2"
        )
        before = {m["chassis"]: (m["x"], m["y"]) for m in state["markers"]}
        deadline = time.monotonic() + 8
        while True:  # the simulated machines drive around
            now = {m["chassis"]: (m["x"], m["y"]) for m in page.evaluate(MAP_STATE_JS)["markers"]}
            if now != before:
                break
            assert time.monotonic() < deadline, "no marker moved"
            page.wait_for_timeout(250)

        page.locator(f'#map .machine-marker[data-chassis="{server.machines[0]}"] .pin').click()
        popup = page.locator("#map .machine-popup")
        popup.wait_for()
        text = popup.inner_text()
        assert server.machines[0] in text and "Last seen" in text and "online" in text, text
        page.wait_for_timeout(300)  # the popup's fade-in
        page.locator("#map").screenshot(path=str(artifacts / "fleet-map-no-tiles.png"))
        tab.assert_clean()
    finally:
        tab.close()


@pytest.fixture(scope="module")
def tiles_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo of 2 machines whose map names a tile server that is not reachable."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIVEDATA_MAP_TILES", UNREACHABLE_TILES)
        mp.setenv("LIVEDATA_MAP_ATTRIBUTION", "Tiles © nobody")
        demo = start_demo(Path(tmp_path_factory.mktemp("fleet-tiles")), "--machines", "2")
    yield demo
    stop(demo)


@pytest.mark.parametrize(("width", "height"), [(1360, 900), (390, 844)])
def test_map_with_an_unreachable_tile_server(
    tiles_server: Server, browser, artifacts, width: int, height: int
) -> None:
    """A configured tile server that cannot be reached: its tiles are asked for and fail,
    the map says so and still shows every machine on the plain graticule; the rest of the
    page stays live. Only tile requests leave the host; only their failures are logged."""
    body = httpx.get(
        f"{tiles_server.url}/api/resources/{ORG}/fleet", headers=tiles_server.headers
    ).json()
    assert body["map"] == {"tiles": UNREACHABLE_TILES, "attribution": "Tiles © nobody"}
    tab = Tab(browser, tiles_server, width, height).open_fleet()
    page = tab.page
    try:
        page.wait_for_function("document.querySelector('#map').dataset.tiles == 'failing'")
        state = _wait_for_markers(page, tiles_server.machines)
        assert state["tiles"] > 0 and state["gridLines"] >= 4, state
        assert state["note"] == "Map tiles unavailable"
        assert state["attribution"] == "Tiles © nobody"
        page.wait_for_function(
            "document.querySelectorAll('.status-pill[data-status=online]').length == 2"
        )
        page.locator("#map").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / f"fleet-map-tiles-unreachable-{width}.png"))
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        tiles = [url for url in tab.foreign if TILE_URL.fullmatch(url)]
        assert tiles, "no tile was asked for"
        tab.foreign = [url for url in tab.foreign if not TILE_URL.fullmatch(url)]
        tab.assert_clean(allow=FAILED_LOAD)
    finally:
        tab.close()
