"""The Gateway object: its tasks run under the runtime's supervision, its state is one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.gateway.test_watch import LocalServer

GATEWAY_TASKS = {
    "security-recheck",
    "watch-sweeper",
    "watch-decode-errors",
    "watch-dtcs",
    "alert-relay",
    "status-relay",
    "viewer-follow",
}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("gateway-local"))
    yield server
    server.stop()


def test_health_lists_the_gateway_tasks(local: LocalServer) -> None:
    """/healthz shows every background task the gateway handed to the runtime, running,
    and the fan-out core's channel count."""
    health = requests.get(f"{local.url}/healthz", timeout=10).json()
    assert health["ok"] is True
    assert set(health["tasks"]) >= GATEWAY_TASKS, health["tasks"]
    assert all(health["tasks"][name] for name in GATEWAY_TASKS)
    assert isinstance(health["liveChannels"], int)


def test_one_fleet_state_serves_the_summary_and_socketio(local: LocalServer) -> None:
    """The fleet summary and Socket.IO read the same fleet state: the summary's organisation
    is the one Socket.IO's fleet holds."""
    response = requests.get(
        f"{local.url}/api/resources/acme/fleet", headers=local.headers, timeout=10
    )
    assert response.status_code == 200, response.text
    assert local.gateway.socket.fleet is local.gateway.fleet
    assert local.gateway.socket.fleet.get("acme") is not None
