"""Status pushes of machines coming online and going offline on a real MQTT device link."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
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
from tests.store.contract import T0, rec


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

    async def _latest_rows(self, tenant: str, chassis: Sequence[str]) -> list[tuple[str, str, int]]:
        self.latest_reads += 1  # one read of latest_many (up to LATEST_MANY_MAX machines)
        return await super()._latest_rows(tenant, chassis)


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
    """Online: one device-update carrying presence and the getStatus answer; one store read."""
    device = machine(broker, setup.tenant, "M1", on=True)
    await device.connect()
    try:
        await until(lambda: setup.of("M1"))
        await asyncio.sleep(0.5)  # a second push would come right after the first
        (update,) = setup.of("M1")
        assert update["status"] == "online" and update["realtime"] == "on"
        assert setup.rows[-1]["CONNECTED"] is True and setup.rows[-1]["REALTIME"] == "on"
        assert setup.store.latest_reads == 1  # the push's last-seen: one latest_many
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
    assert setup.store.latest_reads == 2


async def test_statuses_asked_together_are_read_from_the_store_at_once(setup: Setup) -> None:
    """Last-seen of many machines asked at once: one store read per organisation, each its own."""
    other = f"o{uuid.uuid4().hex[:8]}"
    await setup.store.write(
        [rec(setup.tenant, T0 + i, {"a": i}, chassis=f"M{i}") for i in range(1, 40)]
        + [rec(setup.tenant, T0 + 99, {"b": 1}, chassis="M7", msg_type="client_raw_data")]
        + [rec(other, T0 + 5, {"a": 1}, chassis="M7")]
    )
    asked = [(setup.tenant, f"M{i}") for i in range(60)] + [(other, "M7"), (other, "M8")]
    states = await asyncio.gather(
        *(setup.service.status(org, chassis, probe=False) for org, chassis in asked)
    )
    assert setup.store.latest_reads == 2
    seen = {(org, s["deviceId"]): s["lastSeen"] for (org, _), s in zip(asked, states, strict=True)}
    assert seen[(setup.tenant, "M0")] is None and seen[(setup.tenant, "M39")] == T0 + 39
    assert seen[(setup.tenant, "M7")] == T0 + 99 and seen[(other, "M7")] == T0 + 5
    assert seen[(other, "M8")] is None and seen[(setup.tenant, "M50")] is None
    assert [s["connected"] for s in states] == [False] * len(asked)


async def test_a_failed_batch_read_fails_its_callers_and_the_next_reads_anew(setup: Setup) -> None:
    """A store error reaches every status of that batch; statuses asked after it read again."""
    await setup.store.write([rec(setup.tenant, T0 + 1, {"a": 1}, chassis="M1")])
    failing = setup.store._latest_rows

    async def broken(tenant: str, chassis: Sequence[str]) -> list[tuple[str, str, int]]:
        setup.store.latest_reads += 1
        raise OSError("store down")

    setup.store._latest_rows = broken  # type: ignore[method-assign]
    first = await asyncio.gather(
        *(setup.service.status(setup.tenant, c, probe=False) for c in ("M1", "M2")),
        return_exceptions=True,
    )
    assert [type(e) for e in first] == [OSError, OSError] and setup.store.latest_reads == 1
    setup.store._latest_rows = failing  # type: ignore[method-assign]
    again = await setup.service.status(setup.tenant, "M1", probe=False)
    assert again["lastSeen"] == T0 + 1 and setup.store.latest_reads == 2
