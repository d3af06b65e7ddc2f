"""Status pushes of machines coming online and going offline on a real MQTT device link."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from livedata.bus.memory import MemoryPubSub
from livedata.devices.base import MethodResult, answer_realtime
from livedata.devices.mqtt import MqttDevice, MqttDeviceLink
from livedata.gateway.commands import StatusService
from livedata.gateway.fanout import Fanout
from livedata.metadata import Metadata
from livedata.store.memory import MemoryStore
from tests.devices.contract import until
from tests.servers.mosquitto import Mosquitto, start_mosquitto


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One Mosquitto for the module's tests (each test has its own organisation)."""
    server = start_mosquitto(tmp_path_factory.mktemp("status-mosquitto"))
    try:
        yield server
    finally:
        server.stop()


class CountingStore(MemoryStore):
    """The memory store, counting the newest-record reads a status costs."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.latest_reads = 0

    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        self.latest_reads += 1
        return await super().latest_ts(tenant, chassis, msg_type)


class Setup:
    def __init__(self, link: MqttDeviceLink, store: CountingStore, tenant: str, meta: Path) -> None:
        self.link, self.store, self.tenant = link, store, tenant
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.rows: list[dict[str, Any]] = []
        self.pubsub = MemoryPubSub(f"memory://{uuid.uuid4().hex}")
        self.service = StatusService(
            Fanout(self.pubsub),
            store,
            Metadata(f"sqlite:///{meta}"),
            link,
            self.pubsub,
            lambda org, table, row: self.rows.append(row),
            lambda org, chassis, update: self.updates.append((chassis, update)),
        )

    def of(self, chassis: str) -> list[dict[str, Any]]:
        return [u for c, u in self.updates if c == chassis]


@pytest.fixture
async def setup(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Setup]:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    link = MqttDeviceLink(f"{broker.url}?group=g{uuid.uuid4().hex[:8]}")
    await link.start()
    made = Setup(link, CountingStore(f"memory://{uuid.uuid4().hex}"), tenant, tmp_path / "m.db")
    await made.pubsub.start()
    feed = asyncio.create_task(made.service.presence_feed())
    await asyncio.sleep(0)  # the feed listens from here on
    yield made
    feed.cancel()
    await asyncio.gather(feed, return_exceptions=True)
    await made.pubsub.close()
    await link.close()


def machine(broker: Mosquitto, tenant: str, chassis: str, on: bool) -> MqttDevice:
    """A device that answers ``getStatus`` (real-time ``on`` or ``off``)."""
    state = [on]

    async def answer(method: str, payload: Any) -> MethodResult:
        return answer_realtime(method, lambda: state[0], lambda value: state.__setitem__(0, value))

    return MqttDevice(broker.url, tenant, chassis, on_method=answer)


async def test_a_machine_coming_online_is_pushed_once_with_its_realtime_state(
    broker: Mosquitto, setup: Setup
) -> None:
    """Online: one device-update carrying presence and the getStatus answer; two store reads."""
    device = machine(broker, setup.tenant, "M1", on=True)
    await device.connect()
    try:
        await until(lambda: setup.of("M1"))
        await asyncio.sleep(0.5)  # a second push would come right after the first
        (update,) = setup.of("M1")
        assert update["status"] == "online" and update["realtime"] == "on"
        assert setup.rows[-1]["CONNECTED"] is True and setup.rows[-1]["REALTIME"] == "on"
        assert setup.store.latest_reads == 2  # the push's last-seen: one read per message type
    finally:
        await device.close()


async def test_a_machine_going_offline_is_pushed_at_once(broker: Mosquitto, setup: Setup) -> None:
    """Offline: a device-update with status offline and realtime unknown (no probe)."""
    device = machine(broker, setup.tenant, "M2", on=False)
    await device.connect()
    await until(lambda: setup.of("M2"))
    assert setup.of("M2")[-1]["realtime"] == "off"
    await device.close()
    await until(lambda: setup.of("M2")[-1]["status"] == "offline")
    assert setup.of("M2")[-1]["realtime"] == "unknown"
    assert setup.store.latest_reads == 4
