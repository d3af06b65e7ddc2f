"""How the Live Data page shows values (format.js), run in Chromium: value tables, units, resolution."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.browser.conftest import STATIC_DIR

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def static_url() -> Iterator[str]:
    """The static directory over HTTP on a free loopback port (modules need http://)."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(STATIC_DIR))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


CASES_JS = """async () => {
  const f = await import('/format.js');
  const gear = f.fieldInfo({unit: '', choices: {'-1': 'R', '0': 'N'}, resolution: 1});
  const speed = f.fieldInfo({unit: 'km/h', choices: null, resolution: 0.00390625});
  const volts = f.fieldInfo({unit: 'V', choices: null, resolution: 0.05});
  const temp = f.fieldInfo({unit: 'degC', choices: null, resolution: 0.03125});
  const free = f.fieldInfo({unit: 'dBm', choices: null, resolution: null});
  return {
    gear: f.formatValue(-1, gear),
    gearUnknown: f.formatValue(7, gear),
    speed: f.formatValue(21.5078125, speed),
    volts: f.formatValue(27.6, volts),
    temp: [f.formatValue(-5.5, temp), temp.unit],
    free: f.formatValue(1.23456789, free),
    text: f.formatValue('on', free),
    units: ['deg', 'm/s2', 'rpm', undefined].map(f.unitText),
    decimals: [1, 0.1, 0.125, 4, 0.001].map(f.decimalsFor),
  };
}"""


def test_values_shown_for_people(browser, static_url: str) -> None:
    """Value tables show as 'R (-1)', numbers to their resolution, DBC units as people write them."""
    page = browser.new_page(locale="en-US")
    try:
        page.goto(f"{static_url}/")
        got = page.evaluate(CASES_JS)
    finally:
        page.close()
    assert got == {
        "gear": "R (-1)",
        "gearUnknown": "7",
        "speed": "21.508",
        "volts": "27.60",
        "temp": ["-5.50", "°C"],
        "free": "1.23457",
        "text": "on",
        "units": ["°", "m/s²", "rpm", ""],
        "decimals": [0, 1, 1, 0, 3],
    }
