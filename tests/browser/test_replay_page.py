"""Replay on the Live Data page: a stored hour played at 10x through the same charts, in Chromium."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.sim.machine import Machine
from tests.conftest import Server, start_demo, stop

pytestmark = pytest.mark.browser

HOUR_S = 3600
_AXIS_MAX_JS = """() => {
  const chart = echarts.getInstanceByDom(document.querySelector('.card .chart'));
  return chart.getOption().xAxis[0].max;
}"""


def drive(page) -> dict[str, int]:
    """Points drawn in the first chart (a vehicle_can group: the imported hour has only CAN)."""
    return page.point_counts()["Drive"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    """A demo server with a stored hour, two hours ago, imported from a log of the simulator."""
    demo = start_demo(tmp_path_factory.mktemp("replay-demo"), "--machines", "1")
    start_s = int(time.time()) - 2 * HOUR_S
    machine = Machine(demo.machines[0], CanDecoder.from_dbc(builtin_dbc()), 3)
    lines = []
    for second in range(HOUR_S):
        frames, _ = machine.step(0)
        for i, f in enumerate(frames):
            ident = f"{f.arbitration_id:08X}" if f.is_extended else f"{f.arbitration_id:03X}"
            lines.append(f"({start_s + second + i / 100:.6f}) can0 {ident}#{f.data.hex()}")
    response = httpx.post(
        f"{demo.url}/api/resources/demo/machines/{demo.machines[0]}/import",
        params={"filename": "hour.log"},
        content="\n".join(lines).encode(),
        headers=demo.headers,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["records"] == HOUR_S
    yield demo, start_s
    stop(demo)


def test_replay_at_10x_moves_the_charts_and_pauses(server: tuple[Server, int], live_page) -> None:
    """Replay of the stored hour at 10x: the time axis advances; paused it stands; play resumes; seek goes back."""
    demo, start_s = server
    page = live_page(demo)
    page.open("?range=1h")
    local = datetime.fromtimestamp(start_s).strftime("%Y-%m-%dT%H:%M:%S")
    page.page.fill("#replay-from", local)
    page.page.select_option("#replay-speed", "10")
    page.page.click("#replay-start")
    page.wait_for(
        lambda: "playing" in (page.page.text_content("#replay-state") or ""), what="playing"
    )
    page.wait_for(lambda: min(drive(page).values(), default=0) >= 5, what="replayed points")
    first = page.page.evaluate(_AXIS_MAX_JS)
    assert start_s * 1000 <= first <= (start_s + HOUR_S) * 1000
    page.page.wait_for_timeout(1500)
    moved = page.page.evaluate(_AXIS_MAX_JS)
    assert moved - first >= 5_000, "10x: at least 5 s of data time in 1.5 s"
    assert page.connection_state("vehicle_can") == "replay"

    page.page.click("#replay-pause")
    page.wait_for(
        lambda: "paused" in (page.page.text_content("#replay-state") or ""), what="paused"
    )
    page.page.wait_for_timeout(300)  # the redraw at the paused position
    held = (page.page.evaluate(_AXIS_MAX_JS), drive(page))
    page.page.wait_for_timeout(1000)
    assert (page.page.evaluate(_AXIS_MAX_JS), drive(page)) == held

    page.page.click("#replay-pause")
    page.wait_for(lambda: page.page.evaluate(_AXIS_MAX_JS) > held[0] + 2000, what="playing again")
    seek_to_start = "el => { el.value = '0'; el.dispatchEvent(new Event('change')); }"
    page.page.eval_on_selector("#replay-seek", seek_to_start)
    page.wait_for(lambda: page.page.evaluate(_AXIS_MAX_JS) < held[0], what="back at the start")
    page.screenshot("live-data-replay")
    page.page.click("#replay-live")
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="back to live")
    assert page.page.text_content("#replay-state") == ""
    page.assert_clean()
