"""The Live Data page on the real demo server, in Chromium."""

from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_demo, stop

pytestmark = pytest.mark.browser

DEFAULT_GROUPS = {"Drive", "Engine", "Engine temperatures", "Hydraulics", "Device"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server of its own (fresh groups), on a fixed port so it can be restarted."""
    data_dir = tmp_path_factory.mktemp("browser-demo")
    port = free_port()
    box = [start_demo(data_dir, "--machines", "2", "--port", str(port))]
    yield box  # type: ignore[misc]
    stop(box[0])


# The legend text of some fields of a group's chart, as ECharts renders it.
LEGEND_JS = """([group, fields]) => {
  for (const card of document.querySelectorAll('.card')) {
    if (card.querySelector('h2').textContent !== group) continue;
    const chart = echarts.getInstanceByDom(card.querySelector('.chart'));
    const format = chart.getOption().legend[0].formatter;
    return Object.fromEntries(fields.map((f) => [f, format(f)]));
  }
  return null;
}"""


def all_counts_at_least(page, n: int) -> bool:
    counts = page.point_counts()
    return bool(counts) and all(v >= n for g in counts.values() for v in g.values())


def test_page_opens_with_history_then_moves(server, live_page) -> None:
    """Every default group opens with ~2 minutes drawn, then gains live points, with no gap."""
    demo: Server = server[0]
    page = live_page(demo).open()
    page.wait_for(lambda: all_counts_at_least(page, 115), timeout=10, what="history drawn")
    first = page.point_counts()
    assert set(first) == DEFAULT_GROUPS
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    page.page.wait_for_timeout(3500)
    later = page.point_counts()
    assert all(later[g][f] >= first[g][f] + 2 for g in first for f in first[g]), (first, later)
    stamps = [p[0] for p in page.series("Engine", "engine_rpm")]
    assert stamps == sorted(set(stamps))
    assert max(b - a for a, b in itertools.pairwise(stamps)) == 1000
    assert time.time() * 1000 - stamps[-1] < 3000
    page.screenshot("real-live-page")
    page.assert_clean()


def test_group_created_in_the_ui_fills(server, live_page) -> None:
    """A group created through the form is stored and its chart fills from history, then live;
    its legend shows the gear's value table and numbers to the signal's resolution."""
    demo: Server = server[0]
    page = live_page(demo).open()
    p = page.page
    p.get_by_role("button", name="Add group").first.click()
    form = p.locator("#group-form")
    form.locator("input[name=name]").fill("Fuel and gear")
    form.locator("input[value=fuel_level]").check()
    form.locator("input[value=gear]").check()
    form.get_by_role("button", name="Save").click()
    p.locator("#group-dialog").wait_for(state="hidden")
    page.wait_for(
        lambda: page.point_counts().get("Fuel and gear", {}).get("gear", 0) >= 115,
        timeout=10,
        what="new chart backfilled",
    )
    first = page.point_counts()["Fuel and gear"]["fuel_level"]
    page.wait_for(
        lambda: page.point_counts()["Fuel and gear"]["fuel_level"] >= first + 2,
        what="new chart live",
    )
    # legends show value tables as "R (-1)" and numbers to the signal's resolution
    legend = p.evaluate(LEGEND_JS, ["Fuel and gear", ["gear", "fuel_level"]])
    assert re.fullmatch(r"gear\{value\|(R|N|F\d) \(-?\d\)\}", legend["gear"]), legend
    assert re.fullmatch(r"fuel_level\{value\|\d+\.\d %\}", legend["fuel_level"]), legend
    temps = p.evaluate(LEGEND_JS, ["Engine temperatures", ["coolant_temp"]])
    assert re.fullmatch(r"coolant_temp\{value\|-?\d+ °C\}", temps["coolant_temp"]), temps
    page.screenshot("real-after-add-group")
    page.assert_clean()
    reloaded = live_page(demo).open()
    reloaded.wait_for(lambda: "Fuel and gear" in reloaded.point_counts(), what="kept on server")


def test_server_restart_is_survived_and_the_gap_filled(server, live_page) -> None:
    """When the server goes away the indicator says so; after it is back the gap is filled."""
    demo: Server = server[0]
    page = live_page(demo).open()
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    stop(demo)
    page.wait_for(
        lambda: page.connection_state("vehicle_can") in ("reconnecting", "offline"),
        what="indicator shows the outage",
    )
    page.page.wait_for_timeout(4000)
    page.screenshot("real-outage")
    server[0] = start_demo(
        Path(demo.data_dir), "--machines", "2", "--port", demo.url.rsplit(":", 1)[1]
    )
    server[0].password = demo.password  # printed at the first start only
    page.wait_for(
        lambda: page.connection_state("vehicle_can") == "live", timeout=30, what="reconnected"
    )
    page.page.wait_for_timeout(3000)
    stamps = [p[0] for p in page.series("Drive", "speed")]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) == 1000, f"a hole remains: {max(gaps)} ms"
    assert time.time() * 1000 - stamps[-1] < 3000
    page.assert_clean(allow=(r"WebSocket", r"Failed to load resource", r"ERR_CONNECTION_REFUSED"))
