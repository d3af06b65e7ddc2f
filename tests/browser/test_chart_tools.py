"""Chart tools on the Live Data page: the unit label whole, zoom that leaves or follows the
live edge, PNG download, the time zone."""

from __future__ import annotations

from typing import Any

from tests.conftest import Server

ZOOM_JS = """(startValue) => {
  const chart = echarts.getInstanceByDom(document.querySelector('.card .chart'));
  chart.dispatchAction({ type: 'dataZoom', startValue, endValue: startValue + 20000 });
}"""
VIEW_JS = """() => {
  const chart = echarts.getInstanceByDom(document.querySelector('.card .chart'));
  const axis = chart.getModel().getComponent('xAxis', 0).axis;
  return axis.scale.getExtent();
}"""


def test_unit_zoom_and_png(demo: Server, live_page: Any, tmp_path: Any) -> None:
    """The y unit is drawn whole beside the chart; a zoom into the past stays on those times
    while data arrives, a double click follows the live edge again; PNG downloads an image."""
    page = live_page(demo).open()
    p = page.page
    page.wait_for(lambda: sum(sum(v.values()) for v in page.point_counts().values()) > 20, 20)
    unit = p.evaluate(
        "() => echarts.getInstanceByDom(document.querySelector('.card .chart'))"
        ".getOption().graphic[0].elements[0].style.text"
    )
    group_unit = p.locator(".card .tag.unit").first.inner_text()
    assert unit == group_unit
    start, end = p.evaluate(VIEW_JS)
    p.evaluate(ZOOM_JS, start + 10_000)
    zoomed = p.evaluate(VIEW_JS)
    assert abs(zoomed[0] - (start + 10_000)) < 1000 and abs(zoomed[1] - (start + 30_000)) < 1000
    p.wait_for_timeout(2500)  # two live updates later the view has not moved
    assert p.evaluate(VIEW_JS) == zoomed
    p.dblclick(".card .chart canvas")
    p.wait_for_function(
        f"(() => {{ const c = echarts.getInstanceByDom(document.querySelector('.card .chart'));"
        f" return c.getModel().getComponent('xAxis', 0).axis.scale.getExtent()[1] > {end}; }})()"
    )
    with p.expect_download() as info:
        p.locator(".card-png").first.click()
    download = info.value
    assert download.suggested_filename.endswith(".png")
    path = tmp_path / "chart.png"
    download.save_as(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.assert_clean()


UTC_JS = """() => echarts.getInstanceByDom(document.querySelector('.card .chart')).getModel().get('useUTC')"""


def test_time_zone_choice_is_applied_and_kept(demo: Server, live_page: Any) -> None:
    """Choosing UTC redraws the charts in UTC and is remembered on the next visit."""
    page = live_page(demo).open()
    p = page.page
    assert p.input_value("#tz-select") == "local" and not p.evaluate(UTC_JS)
    p.select_option("#tz-select", "UTC")
    assert p.evaluate(UTC_JS) is True
    page.open()
    assert p.input_value("#tz-select") == "UTC" and p.evaluate(UTC_JS) is True
    page.assert_clean()


SHOWN_JS = "rows => rows.filter(r => !r.hidden).map(r => r.dataset.name)"


def test_field_picker_uses_the_signal_catalog(demo: Server, live_page: Any) -> None:
    """The group editor's field filter finds fields by unit, and with the model's signal
    catalog by message and comment; each row names its message and PGN."""
    page = live_page(demo).open()
    p = page.page
    p.get_by_role("button", name="Add group").click()
    p.fill("#field-filter", "km/h")
    assert p.eval_on_selector_all("#field-list .field-row", SHOWN_JS) == ["speed"]
    p.wait_for_selector("#field-list .field-message", state="attached")  # the catalog arrived
    assert p.input_value("#field-filter") == "km/h", "the filter survives the catalog"
    p.fill("#field-filter", "SPN 190")  # engine_rpm's DBC comment
    assert p.eval_on_selector_all("#field-list .field-row", SHOWN_JS) == ["engine_rpm"]
    row = p.locator("#field-list .field-row[data-name=engine_rpm]")
    assert row.locator(".field-message").inner_text() == "EEC1 · PGN 61444"
    assert "Engine speed (SPN 190)" in (row.get_attribute("title") or "")
    p.fill("#field-filter", "eec1")
    assert "engine_rpm" in p.eval_on_selector_all("#field-list .field-row", SHOWN_JS)
    page.assert_clean()


LABEL_COLOR_JS = """() => echarts.getInstanceByDom(document.querySelector('.card .chart'))
  .getOption().xAxis[0].axisLabel.color"""


def test_dark_mode_follows_the_os_and_the_toggle_is_kept(demo: Server, live_page: Any) -> None:
    """A dark OS gets the dark theme and dark charts; the toggle switches both and is remembered."""
    page = live_page(demo)
    page.page.emulate_media(color_scheme="dark")
    page.open()
    p = page.page
    p.wait_for_selector(".card .chart canvas")
    assert p.evaluate("document.documentElement.dataset.theme") == "dark"
    dark_label = p.evaluate(LABEL_COLOR_JS)
    dark_bg = p.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    p.click("#theme-toggle")
    assert p.evaluate("document.documentElement.dataset.theme") == "light"
    assert p.evaluate(LABEL_COLOR_JS) != dark_label, "the chart did not take the light colours"
    assert p.evaluate("getComputedStyle(document.documentElement).backgroundColor") != dark_bg
    page.open()
    assert p.evaluate("document.documentElement.dataset.theme") == "light", "choice not kept"
    p.click("#theme-toggle")
    assert p.evaluate("localStorage.getItem('livedata.theme')") == "dark"
    page.assert_clean()
