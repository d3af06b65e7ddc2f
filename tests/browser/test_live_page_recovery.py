"""The Live Data page across network drops: recovery by epoch and seq, else history; no hole.

The page's live WebSockets are routed through Playwright (``route_web_socket``),
so the test sees every frame and can cut the connections like a network
failure while the browser is also put offline.  The server keeps 20 s of live
history (``--live-history-seconds 20``): a 5 s drop is recovered by the server
(``RECOVERY`` with ``recovered: true``), a 25 s drop is not (``recovered:
false``) and the page fills it from the history API.  Either way the chart must
end up with exactly the points the store has: no hole and no duplicate timestamp.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import Server, start_demo, stop

pytestmark = pytest.mark.browser

HISTORY_S = 20
LIVE_SOCKETS = re.compile(r"/_common/datasets/[^/]+/live\?")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A 1 Hz demo server of its own whose live channels keep 20 s of history."""
    demo = start_demo(
        tmp_path_factory.mktemp("recovery-page"),
        "--machines",
        "2",
        "--live-history-seconds",
        str(HISTORY_S),
    )
    yield demo
    stop(demo)


class Network:
    """The page's live WebSockets, relayed frame by frame, and a switch to cut them."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.down = False
        self.links: list[tuple[Any, Any]] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.received: list[tuple[str, dict[str, Any]]] = []
        page.route_web_socket(LIVE_SOCKETS, self._route)

    def _route(self, route: Any) -> None:
        if self.down:  # no network: the attempt fails at once
            route.close()
            return
        upstream = route.connect_to_server()
        msg_type = parse_qs(urlsplit(route.url).query)["msgType"][0]

        def from_page(message: str | bytes) -> None:
            self.sent.append((msg_type, json.loads(message)))
            upstream.send(message)

        def from_server(message: str | bytes) -> None:
            self.received.append((msg_type, json.loads(message)))
            route.send(message)

        route.on_message(from_page)
        upstream.on_message(from_server)
        self.links.append((route, upstream))

    def drop(self, seconds: float) -> None:
        """Cut every live socket and stay offline for ``seconds``, then come back."""
        context = self.page.context
        self.down = True
        context.set_offline(True)
        for route, upstream in self.links:
            route.close()
            upstream.close()
        self.links.clear()
        self.page.wait_for_timeout(seconds * 1000)
        self.down = False
        context.set_offline(False)  # the page's "online" handler reconnects at once

    def recoveries(self, msg_type: str = "vehicle_can") -> list[dict[str, Any]]:
        return [m for t, m in self.received if t == msg_type and m.get("type") == "RECOVERY"]

    def resumes(self, msg_type: str = "vehicle_can") -> list[dict[str, Any]]:
        """The INIT_FIELD_LIST messages the page sent with ``since``."""
        return [
            m
            for t, m in self.sent
            if t == msg_type and m.get("type") == "INIT_FIELD_LIST" and "since" in m
        ]


def stored(server: Server, chassis: str, field: str, start: int, end: int) -> list[int]:
    """Timestamps of ``field`` in the store, ``start`` to ``end`` inclusive."""
    response = httpx.get(
        f"{server.url}/api/resources/demo/_common/datasets/{chassis}/history",
        params={"msgType": "vehicle_can", "fields": field, "from": start, "to": end},
        headers=server.headers,
        timeout=10,
    )
    response.raise_for_status()
    return [p[0] for p in response.json()["series"].get(field, [])]


def test_drops_within_and_beyond_the_live_history_leave_no_hole(server: Server, live_page) -> None:
    """A 5 s drop is recovered with since, a 25 s one from history: the chart equals the store."""
    page = live_page(server)
    net = Network(page.page)
    page.open()
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    page.page.wait_for_timeout(3000)

    net.drop(5)
    page.wait_for(lambda: len(net.recoveries()) == 1, timeout=15, what="first RECOVERY")
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live again")
    page.page.wait_for_timeout(3000)

    net.drop(HISTORY_S + 5)
    page.wait_for(lambda: len(net.recoveries()) == 2, timeout=15, what="second RECOVERY")
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live again")
    page.page.wait_for_timeout(3000)

    assert len(net.resumes()) == 2, "the page sends since on each reconnect"
    first, second = net.recoveries()
    assert first["recovered"] is True and len(first["messages"]) >= 4
    seqs = [m["seq"] for m in first["messages"]]
    assert seqs == list(range(net.resumes()[0]["since"]["seq"] + 1, seqs[-1] + 1))
    assert second["recovered"] is False and second["messages"] == []

    chassis = page.page.evaluate("new URLSearchParams(location.search).get('machine')")
    for group, field in (("Drive", "speed"), ("Engine", "engine_rpm")):
        stamps = [p[0] for p in page.series(group, field)]
        assert stamps == sorted(set(stamps)), f"{field}: duplicate or unordered timestamps"
        truth = stored(server, chassis, field, stamps[0], stamps[-1])
        missing = sorted(set(truth) - set(stamps))
        assert missing == [], f"{field}: {len(missing)} stored points not drawn: {missing[:5]}"
        assert set(stamps) <= set(truth), f"{field}: points drawn that the store does not have"
        assert max(b - a for a, b in itertools.pairwise(stamps)) == 1000
    page.screenshot("live-page-after-drops")
    page.assert_clean(
        allow=(r"WebSocket", r"Failed to load resource", r"ERR_INTERNET_DISCONNECTED")
    )
