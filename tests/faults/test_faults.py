"""One fault at a time on the distributed shape's engines, started by the tests: Mosquitto
(persistence on, Mosquitto's default per-client queue of 1,000), Redis, ClickHouse,
PostgreSQL and a Kafka-compatible broker (Tansu).
Ingest, distribute and alerts run as one :class:`Runtime` with its default settings
(the spill journal is on by default); 50 machines send over MQTT at 2 Hz, each message
counted as sent only once the broker acknowledged it (PUBACK).

After each fault: every acknowledged message is stored exactly once, no "no data" alert
was raised (a nodata rule of 10 s watches every machine), and the WARNING and ERROR
lines the fault caused are few (counted through the same repeat filter as
``setup_logging`` installs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from livedata.bus.base import encoded
from livedata.bus.redis import RedisPubSub
from livedata.devices.mqtt import MqttDevice
from livedata.errors import BackendError
from livedata.metadata.alerts import AlertStore, RuleSpec
from livedata.model import DeviceMessage, MsgType, live_channel
from livedata.ratelog import RepeatFilter
from livedata.runtime import Runtime
from livedata.settings import Settings
from tests.servers.clickhouse import ClickHouseServer, start_clickhouse
from tests.servers.kafka import KafkaServer, start_kafka
from tests.servers.mosquitto import Mosquitto, start_mosquitto
from tests.servers.postgres import PostgresServer, start_postgres
from tests.servers.redis import RedisServer, start_redis

pytestmark = pytest.mark.slow

MACHINES = [f"F{n:03d}" for n in range(50)]
PERIOD_S = 0.5
MAX_FAULT_LINES = 20
"""WARNING/ERROR lines one fault may cause, whatever its length."""


@dataclass
class Engines:
    mosquitto: Mosquitto
    redis: RedisServer
    clickhouse: ClickHouseServer
    kafka: KafkaServer


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    base = tmp_path_factory.mktemp("faults")
    with contextlib.ExitStack() as stack:
        mosquitto = start_mosquitto(
            base / "mosquitto",
            f"persistence true\npersistence_location {base / 'mosquitto'}/\n"
            "max_queued_messages 1000\n",
        )
        stack.callback(mosquitto.stop)
        redis = start_redis(base / "redis")
        stack.callback(redis.stop)
        clickhouse = start_clickhouse(base / "clickhouse")
        stack.callback(clickhouse.stop)
        kafka = start_kafka(base / "kafka")
        stack.callback(kafka.stop)
        yield Engines(mosquitto, redis, clickhouse, kafka)


class Counter(logging.Handler):
    """Counts the WARNING+ lines that would reach the log (after the repeat filter)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(RepeatFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}"[:300])


@dataclass
class Run:
    rt: Runtime
    devices: list[MqttDevice]
    acked: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in MACHINES})
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def send(self, device: MqttDevice, offset: int) -> None:
        ts = int(time.time() * 1000) + offset
        while not self.stop.is_set():
            ts += int(PERIOD_S * 1000)
            values = {"speed": ts % 1000 / 10, "n": float(len(self.acked[device.chassis]))}
            message = DeviceMessage(
                "acme", device.chassis, MsgType.CLIENT_RAW_DATA, ts, values=values
            )
            with contextlib.suppress(BackendError):
                await device.send(message)  # returns once the broker has it (PUBACK)
                self.acked[device.chassis].append(ts)
            await asyncio.sleep(PERIOD_S)

    async def check_stored(self) -> int:
        """Every acknowledged message stored exactly once; returns how many there were."""
        rt = self.rt
        deadline = time.monotonic() + 60
        while rt.ingest.depth() or rt.ingest.oldest_unstored() is not None or rt.ingest.unlogged:
            assert time.monotonic() < deadline, "ingest did not drain"
            await asyncio.sleep(0.2)
        for chassis, stamps in self.acked.items():
            stored = await rt.store.query(
                "acme", chassis, "client_raw_data", ["n"], stamps[0], stamps[-1], limit=10**6
            )
            assert [ts for ts, _ in stored["n"]] == stamps, f"{chassis}: stored != acknowledged"
        return sum(map(len, self.acked.values()))


async def fleet_run(
    tmp_path: Path,
    engines: Engines,
    fault: Callable[[Run], Awaitable[None]],
    *,
    store: str,
    pubsub: str = "",
    devices: str = "",
    log: str = "",
    **overrides: object,
) -> tuple[Run, Counter]:
    """Run the fleet 4 s, the fault, 4 s more; check storage and alerts; the log lines.
    ``overrides``: further settings."""
    settings = Settings(
        data_dir=tmp_path,
        store=store,
        metadata=f"sqlite:///{tmp_path}/meta.db",
        log=log or f"memory://{uuid.uuid4().hex}",
        pubsub=pubsub or f"memory://{uuid.uuid4().hex}",
        devices=devices
        or f"{engines.mosquitto.url}?group=g{uuid.uuid4().hex[:8]}&client_id=i{uuid.uuid4().hex[:8]}",
        roles=["ingest", "distribute", "alerts"],
        connect_timeout=30,
        **overrides,  # type: ignore[arg-type]
    )
    rt = Runtime(settings)
    await rt.meta.start()
    await rt.meta.ensure_org("acme", "Acme")
    for chassis in MACHINES:
        await rt.meta.upsert_machine("acme", chassis, chassis, "WL")
    await AlertStore(rt.meta).create_rule(
        RuleSpec(id=0, org="acme", name="silent", kind="nodata", msg_type=None, nodata_seconds=10)
    )
    await rt.start()
    counter = Counter()
    run = Run(rt, [MqttDevice(engines.mosquitto.url, "acme", c) for c in MACHINES])
    try:
        for device in run.devices:
            await device.connect()
        run.tasks = [asyncio.create_task(run.send(d, n)) for n, d in enumerate(run.devices)]
        await asyncio.sleep(4)
        logging.getLogger().addHandler(counter)
        try:
            await fault(run)
            await asyncio.sleep(4)
            run.stop.set()
            await asyncio.gather(*run.tasks)
            total = await run.check_stored()
        finally:
            logging.getLogger().removeHandler(counter)
        assert rt.alerts.raised == 0, "no false alert"
        print(f"\n{total} acknowledged messages stored once; {len(counter.lines)} log lines:")
        print("\n".join(f"  {line[:160]}" for line in counter.lines))
        assert len(counter.lines) <= MAX_FAULT_LINES, counter.lines
        return run, counter
    finally:
        run.stop.set()
        for task in run.tasks:
            task.cancel()
        await asyncio.gather(*run.tasks, return_exceptions=True)
        for device in run.devices:
            await device.close()
        await rt.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres(fsync=False)
    yield server
    server.stop(remove=True)


@pytest.mark.parametrize("backend", ["clickhouse", "postgres"])
async def test_store_down_20_s_loses_no_acknowledged_message(
    tmp_path: Path, engines: Engines, backend: str, request: pytest.FixtureRequest
) -> None:
    """The store (ClickHouse, PostgreSQL) stopped for 20 s: ingest spills to its journal (on
    by default), keeps acknowledging, live and the alert clock keep going; all is in the
    store afterwards."""
    if backend == "clickhouse":
        server: ClickHouseServer | PostgresServer = engines.clickhouse
        store = engines.clickhouse.url(f"f{uuid.uuid4().hex[:8]}")
    else:
        server = request.getfixturevalue("postgres")
        store = server.url()
    published: list[int] = []

    async def fault(run: Run) -> None:
        await run.rt.pubsub.subscribe(
            live_channel("acme", MACHINES[0], "client_raw_data"),
            lambda _c, m: published.append(orjson.loads(encoded(m))["ts"]),
        )
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(20)
        during = len(published)
        assert run.rt.ingest.spilled > 0, "the outage went to the journal"
        await asyncio.to_thread(server.start)
        assert during >= 30, "live kept flowing during the outage"

    await fleet_run(tmp_path, engines, fault, store=store)


async def test_broker_restart_loses_no_acknowledged_message(
    tmp_path: Path, engines: Engines
) -> None:
    """Mosquitto restarted while ingest is away, and the devices back and publishing before
    ingest resubscribes: ingest's plain persistent subscription (``shared=off``) is restored
    by the broker, which queues those messages for it."""
    link = f"{engines.mosquitto.url}?shared=off&client_id=i{uuid.uuid4().hex[:8]}"

    async def fault(run: Run) -> None:
        await run.rt.devices.close()
        await asyncio.to_thread(engines.mosquitto.restart)
        deadline = time.monotonic() + 30
        while not all(d.connected for d in run.devices):
            assert time.monotonic() < deadline, "the devices did not reconnect"
            await asyncio.sleep(0.1)
        before = sum(map(len, run.acked.values()))
        await asyncio.sleep(2)
        assert sum(map(len, run.acked.values())) > before + 100, "devices published meanwhile"
        await run.rt.devices.start()

    run, _ = await fleet_run(
        tmp_path, engines, fault, store=f"sqlite:///{tmp_path}/t.db", devices=link
    )
    assert all(d.connects >= 2 for d in run.devices)


async def test_redis_restart_10_s_is_recovered_from_the_history(
    tmp_path: Path, engines: Engines
) -> None:
    """Redis down 10 s: live messages wait in distribute's backlog and are published into
    the channels' history when Redis is back, so a client's ``since`` recovers every one;
    live resumes within seconds."""
    url = f"{engines.redis.url}?prefix=f{uuid.uuid4().hex[:8]}/"
    client = RedisPubSub(url)
    seen: list[float] = []
    times: dict[str, float] = {}

    async def fault(run: Run) -> None:
        await client.start()
        await client.subscribe(
            live_channel("acme", MACHINES[0], "client_raw_data"),
            lambda _c, _m: seen.append(time.monotonic()),
        )
        await asyncio.to_thread(engines.redis.stop)
        times["down_ms"] = time.time() * 1000
        await asyncio.sleep(10)
        times["up_ms"] = time.time() * 1000
        await asyncio.to_thread(engines.redis.start)
        times["up"] = time.monotonic()

    try:
        run, _ = await fleet_run(
            tmp_path, engines, fault, store=f"sqlite:///{tmp_path}/t.db", pubsub=url
        )
        resumed = min(t for t in seen if t > times["up"]) - times["up"]
        print(f"live resumed {resumed:.1f} s after Redis was back")
        for chassis in MACHINES:
            history = await client.history(live_channel("acme", chassis, "client_raw_data"))
            messages = [orjson.loads(m) for m in history]
            stamps = [m["ts"] for m in messages]
            outage = [
                ts for ts in run.acked[chassis] if times["down_ms"] + 1000 <= ts <= times["up_ms"]
            ]
            assert len(outage) >= 15 and set(outage) <= set(stamps), (
                f"{chassis}: the history lacks messages of the restart"
            )
            assert stamps == sorted(stamps)
            seqs = [m["seq"] for m in messages]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        await client.close()


async def test_kafka_down_10_s_keeps_acknowledging_and_storing(
    tmp_path: Path, engines: Engines
) -> None:
    """The Kafka-compatible log stopped for 10 s: ingest keeps storing and acknowledging
    (the records wait for the log in memory, within ``ingest_queue``) and appends them
    once it is back; the nodata check finds the data in the store, so no alert."""
    topic = f"{engines.kafka.url}/f{uuid.uuid4().hex[:8]}?partitions=2&session_timeout_ms=6000"
    waited: list[int] = []

    async def fault(run: Run) -> None:
        await asyncio.to_thread(engines.kafka.stop)
        await asyncio.sleep(10)
        waited.append(run.rt.ingest.unlogged)
        await asyncio.to_thread(engines.kafka.start)

    await fleet_run(tmp_path, engines, fault, store=f"sqlite:///{tmp_path}/t.db", log=topic)
    assert waited[0] > 500, "records waited for the log while devices were acknowledged"


async def test_kafka_down_beyond_memory_goes_to_the_log_journal(
    tmp_path: Path, engines: Engines
) -> None:
    """The Kafka-compatible log stopped for 10 s with a small ``ingest_queue`` (300): the
    records beyond 150 wait in the log journal, devices keep being acknowledged, and once
    the log is back the journal is appended to it and empties."""
    topic = f"{engines.kafka.url}/f{uuid.uuid4().hex[:8]}?partitions=2&session_timeout_ms=6000"
    journalled: list[int] = []

    async def fault(run: Run) -> None:
        await asyncio.to_thread(engines.kafka.stop)
        await asyncio.sleep(10)
        journal = run.rt.ingest.log_journal
        assert journal is not None
        journalled.append(journal.records)
        await asyncio.to_thread(engines.kafka.start)
        for _ in range(300):  # the log back: the journal drains to it within a minute
            if not journal.records:
                break
            await asyncio.sleep(0.2)
        journalled.append(journal.records)

    await fleet_run(
        tmp_path, engines, fault, store=f"sqlite:///{tmp_path}/t.db", log=topic, ingest_queue=300
    )
    assert journalled[0] > 300, "records waited for the log in its journal"
    assert journalled[1] == 0, "the journal went to the log once it was back"
