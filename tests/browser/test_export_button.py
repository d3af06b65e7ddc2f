"""The Live Data page's download buttons: a group's shown range as CSV and Parquet, in Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import Server, start_demo, stop

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server of this module's own."""
    demo = start_demo(tmp_path_factory.mktemp("export-demo"), "--machines", "1")
    yield demo
    stop(demo)


def test_download_buttons_save_the_groups_range(server: Server, live_page, tmp_path: Path) -> None:
    """CSV and Parquet buttons download the group's fields over the shown range; values equal history."""
    page = live_page(server)
    page.open()
    card = page.page.locator(".card").first
    page.wait_for(
        lambda: all(
            v >= 1 for v in page.point_counts()[card.locator("h2").text_content()].values()
        ),
        what="history drawn",
    )
    group_id = card.get_attribute("data-group-id")
    with page.page.expect_download() as info:
        card.locator('[data-download="csv"]').click()
    download = info.value
    assert download.suggested_filename.endswith(".csv")
    assert server.machines[0] in download.suggested_filename
    csv_path = tmp_path / download.suggested_filename
    download.save_as(csv_path)
    frame = pd.read_csv(csv_path)
    assert frame.columns[0] == "time" and len(frame) >= 60  # two minutes of 1 Hz history
    fields = [c.split(" [")[0] for c in frame.columns[1:]]
    groups = page.page.evaluate("fetch('/api/resources/demo/groups').then((r) => r.json())")
    wanted = next(g for g in groups["groups"] if str(g["id"]) == group_id)
    assert fields == wanted["fields"]

    ts = pd.Timestamp(frame["time"].iloc[-1]).value // 1_000_000
    history = page.page.evaluate(
        "(url) => fetch(url).then((r) => r.json())",
        f"/api/resources/demo/_common/datasets/{server.machines[0]}/history?msgType={wanted['msgType']}"
        f"&fields={','.join(fields)}&from={ts}&to={ts}",
    )
    row = frame.iloc[-1]
    for column, field in zip(frame.columns[1:], fields, strict=True):
        assert history["series"][field] == [[ts, row[column]]]

    with page.page.expect_download() as info:
        card.locator('[data-download="parquet"]').click()
    parquet_path = tmp_path / info.value.suggested_filename
    info.value.save_as(parquet_path)
    table = pq.read_table(parquet_path)
    assert table.column_names == ["time", *fields] and table.num_rows >= 60
    page.screenshot("live-data-download-buttons")
    page.assert_clean()


def test_import_log_button_uploads_and_shows_the_summary(server: Server, live_page) -> None:
    """An admin picks a CAN log on the page: the import summary is shown; a corrupt one is a banner."""
    logs = Path(__file__).resolve().parents[1] / "files" / "logs"
    page = live_page(server)
    page.open()
    page.page.set_input_files("#import-file", str(logs / "handwritten.log"))
    page.wait_for(
        lambda: "rows" in (page.page.text_content("#import-state") or ""), what="import summary"
    )
    assert page.page.text_content("#import-state").startswith(
        "handwritten.log: 7 frames: 5 decoded, 1 unknown ids, 1 errors; 2 rows from"
    )
    page.page.set_input_files("#import-file", str(logs / "corrupt.log"))
    page.page.wait_for_selector("#banner:not([hidden])")
    assert "corrupt.log line 4" in page.page.text_content("#banner-list")
    page.assert_clean(allow=(r"status of 400",))
