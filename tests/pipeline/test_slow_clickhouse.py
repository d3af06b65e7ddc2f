"""ClickHouse stalled (SIGSTOP) for longer than ``spill_after`` under load, in the distributed
shape's engines: devices over a real Mosquitto, two ingest :class:`Runtime` s of one MQTT
share group (each with its spill journal), a real ClickHouse store started by the test.  A
write in flight during a stall is journalled, acknowledged and ends later; nothing is
faked, and every message the broker took must be in ClickHouse exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client

from livedata.devices.mqtt import MqttDevice
from livedata.runtime import Runtime
from livedata.settings import Settings
from tests.pipeline.mqtt_load import send_until, stop_load
from tests.servers.clickhouse import ClickHouseServer, start_clickhouse
from tests.servers.mosquitto import Mosquitto, start_mosquitto

MACHINES = [f"CH{n}" for n in range(40)]
PERIOD_S = 0.02
"""Each machine sends a message every 20 ms: up to 2,000 messages per second."""
INGESTS = 2
STALLS = 3
STALL_S = 1.0
"""Each stall outlasts ``spill_after`` (0.3 s): a write in flight is journalled."""


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[ClickHouseServer]:
    """A server of this test alone: it is stopped with SIGSTOP."""
    server = start_clickhouse(tmp_path / "clickhouse")
    yield server
    if server.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = start_mosquitto(tmp_path / "mosquitto")
    yield server
    server.stop()


@pytest.mark.slow
async def test_clickhouse_stalls_lose_nothing(
    tmp_path: Path, clickhouse: ClickHouseServer, broker: Mosquitto
) -> None:
    """ClickHouse stopped three times for 1 s under 2,000 msg/s through two ingest processes
    (spill_after 0.3 s): the stalled writes are journalled and end later, the journals end
    empty, and every message the broker took is in ClickHouse, each in one row."""
    database = f"slow{uuid.uuid4().hex[:8]}"
    group = f"g{uuid.uuid4().hex[:8]}"
    runtimes = [
        Runtime(
            Settings(
                data_dir=tmp_path / f"ingest{n}",
                store=clickhouse.url(database),
                metadata=f"sqlite:///{tmp_path}/meta.db",
                log=f"memory://{uuid.uuid4().hex}",
                pubsub=f"memory://{uuid.uuid4().hex}",
                devices=f"{broker.url}?group={group}",
                roles=["ingest"],
                spill_dir=str(tmp_path / f"spill{n}"),
                spill_after=0.3,
                connect_timeout=20,
            )
        )
        for n in range(INGESTS)
    ]
    assert clickhouse.process is not None
    server_pid = clickhouse.process.pid
    sent: list[tuple[str, int]] = []
    devices: list[MqttDevice] = []
    tasks: list[asyncio.Task[None]] = []
    stop_sending = asyncio.Event()
    try:
        for rt in runtimes:
            await rt.start()
        meta = runtimes[0].meta
        await meta.ensure_org("acme", "Acme")
        for chassis in MACHINES:
            await meta.upsert_machine("acme", chassis, chassis, "WL")
            device = MqttDevice(broker.url, "acme", chassis)
            await device.connect()
            devices.append(device)

        tasks = [
            asyncio.create_task(
                send_until(d, stop_sending, PERIOD_S, lambda ts, c=d.chassis: sent.append((c, ts)))
            )
            for d in devices
        ]
        await asyncio.sleep(2)
        for _ in range(STALLS):
            os.kill(server_pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(STALL_S)
            finally:
                os.kill(server_pid, signal.SIGCONT)
            await asyncio.sleep(1.5)
        stop_sending.set()
        await asyncio.gather(*tasks)
        ingests = [rt.ingest for rt in runtimes]
        deadline = time.monotonic() + 60
        while any(
            i.spill is None or i.spill.records or i.depth() or i.oldest_unstored() is not None
            for i in ingests
        ):
            assert time.monotonic() < deadline, "not drained"
            await asyncio.sleep(0.2)
        assert sum(i.spilled for i in ingests) > 0, "a stalled write was journalled"

        client = Client("127.0.0.1", port=clickhouse.tcp_port, database=database)
        try:
            rows = client.execute("SELECT chassis, ts FROM records")
        finally:
            client.disconnect()
        stored = Counter(rows)
        missing = set(sent) - set(stored)
        assert not missing, f"{len(missing)} of {len(sent)} messages missing"
        assert max(stored.values()) == 1, "each message stored in one row"
    finally:
        await stop_load(stop_sending, tasks, devices)
        for rt in runtimes:
            await rt.stop()
