"""The Live Data page lists a machine's active DTCs, on the real demo server, in Chromium."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from livedata.codec import encode
from tests.conftest import Server, start_demo, stop
from tests.e2e.j1939 import ORG, can_message, dtc

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_demo(tmp_path_factory.mktemp("dtc-panel"), "--machines", "1")
    yield server
    stop(server)


def send_dm1(server: Server, chassis: str, payload: bytes) -> None:
    """A DM1 single frame from ECU 0x21, sent over HTTP ingest with the machine's secret."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        secret = http.post(
            f"/api/resources/{ORG}/machines/{chassis}/secret", headers=server.headers
        ).json()["secret"]
        ts = int(time.time() * 1000)
        message = can_message(chassis, ts, [(ts, 0x18FECA21, payload)])
        response = http.post(
            f"/api/ingest/{ORG}/{chassis}/vehicle_can",
            content=encode(message),
            headers={
                "Authorization": f"Bearer {secret}",
                "content-type": "application/octet-stream",
            },
        )
        assert response.status_code == 202, response.text


def test_active_dtcs_shown_and_cleared(server: Server, live_page) -> None:
    """A DTC that becomes active is listed with its SPN name and FMI text; it goes when cleared."""
    chassis = server.machines[0]
    page = live_page(server).open()
    p = page.page
    send_dm1(server, chassis, bytes([0x04, 0xFF]) + dtc(3226, 2, 4) + b"\xff\xff")
    item = p.locator('#dtc-panel li[data-spn="3226"]')
    item.wait_for(state="visible", timeout=10_000)
    text = item.inner_text()
    assert "SPN 3226 Aftertreatment 1 outlet NOx 1" in text
    assert "FMI 2 erratic, intermittent or incorrect" in text
    assert "4×" in text and "ECU 0x21" in text
    page.screenshot("live-page-dtcs")
    send_dm1(server, chassis, bytes([0x00, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF]))
    item.wait_for(state="detached", timeout=10_000)
    page.assert_clean()
