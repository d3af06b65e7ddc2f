"""The Live Data page's time-range selector on the real demo server, in Chromium."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import Server, start_demo, stop

pytestmark = pytest.mark.browser

_X_SPAN_JS = """() => {
  const chart = echarts.getInstanceByDom(document.querySelector('.card .chart'));
  const axis = chart.getOption().xAxis[0];
  return axis.max - axis.min;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server of this module's own."""
    demo = start_demo(tmp_path_factory.mktemp("range-demo"), "--machines", "1")
    yield demo
    stop(demo)


def test_wide_range_loads_downsampled_history_and_stays_live(server: Server, live_page) -> None:
    """7 d asks history with maxPoints ~ chart width, spans 7 d, appends live; 2 min goes back."""
    page = live_page(server)
    asked: list[dict[str, list[str]]] = []
    page.page.on(
        "request",
        lambda r: asked.append(parse_qs(urlsplit(r.url).query)) if "/history" in r.url else None,
    )
    page.open("?range=7d")
    assert page.page.locator("#range-select").input_value() == "7d"
    page.wait_for(lambda: bool(page.point_counts()), what="charts")
    page.wait_for(
        lambda: all(v >= 1 for g in page.point_counts().values() for v in g.values()),
        timeout=15,
        what="downsampled history drawn",
    )
    assert asked and all("maxPoints" in q for q in asked)
    width = page.page.evaluate("document.querySelector('.card .chart').clientWidth")
    assert {int(q["maxPoints"][0]) for q in asked} == {width}
    now = time.time() * 1000
    assert all(abs(int(q["from"][0]) - (now - 7 * 86_400_000)) < 60_000 for q in asked)
    assert page.page.evaluate(_X_SPAN_JS) == 7 * 86_400_000
    first = page.point_counts()
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    page.page.wait_for_timeout(3500)
    later = page.point_counts()
    assert all(later[g][f] >= first[g][f] + 2 for g in first for f in first[g]), (first, later)
    page.screenshot("time-range-7d")

    asked.clear()
    page.page.select_option("#range-select", "2m")
    page.wait_for(lambda: page.page.evaluate(_X_SPAN_JS) == 120_000, what="2 min window")
    page.wait_for(lambda: bool(asked), what="2 min history")
    assert all("maxPoints" not in q for q in asked)
    assert "range=" not in page.page.url
    page.assert_clean()
