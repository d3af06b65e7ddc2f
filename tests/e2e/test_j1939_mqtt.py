"""J1939 end to end over MQTT: a demo server whose devices link is a real Mosquitto.

The machine (simulated over MQTT like the rest of the demo fleet) is switched to the
test's J1939 DBC through the API; the test publishes its own telemetry on the
machine's topic at QoS 1, as a device does: an EEC1 from another source address and a
DM1 of 2 DTCs whose BAM spans two messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiomqtt
import httpx
import pytest

from livedata.codec import encode
from livedata.devices.mqtt import telemetry_topic
from tests.conftest import Server, start_demo, stop
from tests.e2e.j1939 import ORG, bam, can_message, dtc, dtcs, stored, use_j1939_dbc, wait_for
from tests.servers.mosquitto import Mosquitto, start_mosquitto


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("j1939-mqtt")
    server = start_demo(data_dir, "--machines", "1", "--devices", broker.url)
    yield server
    stop(server)


def publish(broker: Mosquitto, chassis: str, ts: int, frames: list[tuple[int, int, bytes]]) -> None:
    """One vehicle_can message of ``chassis`` at QoS 1, as the machine would send it."""
    message = can_message(chassis, ts, frames)

    async def go() -> None:
        host, port = broker.url.removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port), identifier=f"test-{chassis}-{ts}") as client:
            await client.publish(
                telemetry_topic(ORG, chassis, "vehicle_can"), encode(message), qos=1
            )

    asyncio.run(go())


def test_j1939_over_mqtt(server: Server, broker: Mosquitto) -> None:
    """Frames from another source address decode and a DM1 BAM spanning two MQTT messages
    is reassembled: the history has the values, the DTC API the codes."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as http:
        chassis = use_j1939_dbc(http, server.machines[0])
        t1 = int(time.time()) * 1000 + 237
        dm1 = bam(0x19, 0xFECA, bytes([0x10, 0xFF]) + dtc(175, 0, 2) + dtc(94, 1, 5), t1 + 10)
        eec1 = (t1, 0x18F00407, bytes.fromhex("FFFF824038FFFFFF"))  # priority 6, SA 0x07
        publish(broker, chassis, t1, [eec1, *dm1[:2]])
        t2 = t1 + 1000
        publish(broker, chassis, t2, dm1[2:])

        series = stored(http, chassis, "engine_speed,engine_torque", t1)
        assert series == {"engine_speed": [[t1, 1800.0]], "engine_torque": [[t1, 5]]}
        later = stored(http, chassis, "dtc.175.0,dtc.94.1,lamp_red_stop", t2)
        assert later == {"dtc.175.0": [[t2, 2]], "dtc.94.1": [[t2, 5]], "lamp_red_stop": [[t2, 1]]}

        def codes() -> list[tuple[int, int, int]]:
            active = dtcs(http, chassis)["active"]
            return sorted((d["spn"], d["fmi"], d["oc"]) for d in active if d["sa"] == 0x19)

        assert wait_for(codes) == [(94, 1, 5), (175, 0, 2)]
