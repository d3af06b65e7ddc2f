"""PostgreSQL stopped for 30 s under load, in the distributed shape's engines: devices over a
real Mosquitto, ingest and distribute roles of a :class:`Runtime`, a real PostgreSQL store
started by the test, the spill journal on a directory of the test.  Nothing is faked."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from livedata.devices.mqtt import MqttDevice
from livedata.model import MsgType, live_channel
from livedata.runtime import Runtime
from livedata.settings import Settings
from tests.pipeline.mqtt_load import send_until, stop_load
from tests.servers.mosquitto import Mosquitto, start_mosquitto
from tests.servers.postgres import PostgresServer, start_postgres

MACHINES = [f"PG{n}" for n in range(10)]
PERIOD_S = 0.025
"""Each machine sends a message every 25 ms: 400 messages (3,200 points) per second."""
OUTAGE_S = 30.0
QUEUE_MAX = 2_000
SPILL_MAX = 64 * 2**20


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A cluster of this test alone: it is stopped and started again."""
    server = start_postgres(fsync=False)
    yield server
    server.stop(remove=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = start_mosquitto(tmp_path / "mosquitto")
    yield server
    server.stop()


async def test_postgres_down_for_30_s_under_load(
    tmp_path: Path, postgres: PostgresServer, broker: Mosquitto
) -> None:
    """Store down 30 s under 400 msg/s over MQTT: live keeps flowing, memory stays within the
    queue and journal bounds, and every message the broker took is in PostgreSQL afterwards."""
    settings = Settings(
        data_dir=tmp_path,
        store=postgres.url(),
        metadata=f"sqlite:///{tmp_path}/meta.db",
        log=f"memory://{uuid.uuid4().hex}",
        pubsub=f"memory://{uuid.uuid4().hex}",
        devices=f"{broker.url}?group=g{uuid.uuid4().hex[:8]}",
        roles=["ingest", "distribute"],
        spill_dir=str(tmp_path / "spill"),
        spill_max_bytes=SPILL_MAX,
        ingest_queue=QUEUE_MAX,
        connect_timeout=20,
    )
    rt = Runtime(settings)
    await rt.start()
    spill = rt.ingest.spill
    assert spill is not None
    live: list[float] = []
    sent: dict[str, list[int]] = {chassis: [] for chassis in MACHINES}
    sent_at: list[float] = []
    peaks = {"queue": 0, "rss": 0}
    devices: list[MqttDevice] = []
    tasks: list[asyncio.Task[None]] = []
    stop_sending = asyncio.Event()
    proc = psutil.Process()
    try:
        await rt.meta.ensure_org("acme", "Acme")
        for chassis in MACHINES:
            await rt.meta.upsert_machine("acme", chassis, chassis, "WL")
            channel = live_channel("acme", chassis, MsgType.CLIENT_RAW_DATA)
            await rt.pubsub.subscribe(channel, lambda _c, _m: live.append(time.monotonic()))
            device = MqttDevice(broker.url, "acme", chassis)
            await device.connect()
            devices.append(device)

        def sent_by(chassis: str) -> Callable[[int], None]:
            def note(ts: int) -> None:
                sent[chassis].append(ts)
                sent_at.append(time.monotonic())

            return note

        async def sample() -> None:
            while True:
                peaks["queue"] = max(peaks["queue"], rt.ingest.depth())
                peaks["rss"] = max(peaks["rss"], proc.memory_info().rss)
                await asyncio.sleep(0.05)

        tasks = [
            asyncio.create_task(send_until(d, stop_sending, PERIOD_S, sent_by(d.chassis)))
            for d in devices
        ]
        tasks.append(asyncio.create_task(sample()))
        await asyncio.sleep(3)
        assert sum(map(len, sent.values())) > 500 and live, "the load runs"
        rss_before = proc.memory_info().rss

        await asyncio.to_thread(postgres.stop)
        down_at = time.monotonic()
        await asyncio.sleep(OUTAGE_S)
        up_at = time.monotonic()
        live_in_outage = sum(1 for t in live if down_at + 3 <= t <= up_at)
        sent_in_outage = sum(1 for t in sent_at if down_at + 3 <= t <= up_at)
        await asyncio.to_thread(postgres.start)

        await asyncio.sleep(2)
        stop_sending.set()
        await asyncio.gather(*tasks[:-1])
        total = sum(map(len, sent.values()))
        deadline = time.monotonic() + 60
        while spill.records or rt.ingest.depth() or rt.ingest.oldest_unstored() is not None:
            assert time.monotonic() < deadline, f"not drained: {spill.stats()}"
            await asyncio.sleep(0.2)

        for chassis, stamps in sent.items():
            stored = await rt.store.query(
                "acme", chassis, "client_raw_data", ["s0"], stamps[0], stamps[-1], limit=10**6
            )
            assert [ts for ts, _ in stored["s0"]] == stamps, f"{chassis}: stored != sent"
        print(
            f"\n{total} messages, {live_in_outage} of {sent_in_outage} live during the outage, "
            f"journal peak "
            f"{spill.peak_records} records / {spill.peak_bytes} B, queue peak {peaks['queue']}, "
            f"RSS {rss_before / 2**20:.0f} → peak {peaks['rss'] / 2**20:.0f} MiB"
        )
        assert live_in_outage > sent_in_outage / 2 > 1_000, "live kept flowing during the outage"
        assert spill.peak_records > sent_in_outage, "the outage went to the journal"
        assert spill.peak_bytes <= SPILL_MAX and peaks["queue"] <= QUEUE_MAX
    finally:
        await stop_load(stop_sending, tasks, devices)
        await rt.stop()
