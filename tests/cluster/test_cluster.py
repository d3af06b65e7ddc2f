"""The distributed shape on this machine: every role as its own processes on real engines.

Mosquitto, Tansu (Kafka), Redis, ClickHouse and PostgreSQL are started by the test;
then 2 ingest, 2 distribute and 2 gateway processes and a simulated fleet of 20
machines over MQTT.  Mid-run one process of each role is killed (SIGKILL); the ingest
process is restarted under the same MQTT client id, as systemd would, because
Mosquitto hands a dead member's unacknowledged messages back only to its own
persistent session (see ``livedata.devices.mqtt``).  The live clients authenticate as
the demo's admin (created by ``--seed-demo``), whose API token every process is given
as ``LIVEDATA_ADMIN_TOKEN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from livedata.decode.can import CanDecoder
from livedata.model import MsgType
from livedata.sim.demo import DBC_PATH, ORG
from livedata.sim.fleet import default_chassis_ids
from livedata.sim.machine import Machine
from livedata.store.clickhouse import ClickHouseStore
from tests.cluster.live import Client
from tests.conftest import ADMIN_TOKEN
from tests.servers import free_port, stop_process
from tests.servers.clickhouse import start_clickhouse
from tests.servers.kafka import start_kafka
from tests.servers.mosquitto import start_mosquitto
from tests.servers.postgres import start_postgres
from tests.servers.redis import start_redis

MACHINES = 20
RUN_S = 36
KILL_AT_S = 14
FIELDS = ["engine_rpm", "speed"]


@dataclass
class Engines:
    mqtt: str
    log: str
    pubsub: str
    store: str
    metadata: str


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    base = tmp_path_factory.mktemp("cluster")
    with contextlib.ExitStack() as stack:
        mosquitto = start_mosquitto(base / "mosquitto")
        stack.callback(mosquitto.stop)
        kafka = start_kafka(base / "kafka")
        stack.callback(kafka.stop)
        redis = start_redis(base / "redis")
        stack.callback(redis.stop)
        clickhouse = start_clickhouse(base / "clickhouse")
        stack.callback(clickhouse.stop)
        postgres = start_postgres(fsync=False)
        stack.callback(postgres.stop, remove=True)
        yield Engines(
            mqtt=mosquitto.url,
            log=f"{kafka.url}/records?partitions=4&session_timeout_ms=6000",
            pubsub=f"{redis.url}?prefix=cluster",
            store=clickhouse.url("livedata"),
            metadata=postgres.url(),
        )


class Role:
    """One `livedata serve` process."""

    def __init__(self, name: str, args: list[str], logs: Path, port: int = 0) -> None:
        self.name, self.args, self.logs, self.port = name, args, logs, port
        self.url = ""
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Role:
        log = (self.logs / f"{self.name}.log").open("a")
        cmd = [sys.executable, "-m", "livedata", "serve", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "LIVEDATA_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        return self

    def wait_ready(self, timeout: float = 60) -> Role:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if m := re.search(r"serving on (http://\S+)", line):
                self.url = m.group(1)
                return self
            if not line and self.process.poll() is not None:
                break
        raise AssertionError(
            f"{self.name} did not start:\n{(self.logs / f'{self.name}.log').read_text()[-3000:]}"
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C: a graceful stop (then its runtime's), ``returncode`` once done."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def expected_values(chassis: str, first_ts: int, last_ts: int) -> dict[int, dict[str, float]]:
    """Replay the simulator (seed 0) to get what machine ``chassis`` sent each second."""
    decoder = CanDecoder.from_dbc(DBC_PATH.read_text())
    machine = Machine(chassis, decoder, seed=0)
    out = {}
    for ts in range(first_ts, last_ts + 1000, 1000):
        frames, _ = machine.step(ts)
        out[ts] = decoder.decode(frames).values
    return out


def test_cluster_survives_losing_one_process_of_each_role(engines: Engines, tmp_path: Path) -> None:
    """20 machines over MQTT for 36 s: stored once and complete, live at 1 Hz, kills survived."""
    logs = tmp_path
    common = [
        "--store",
        engines.store,
        "--metadata",
        engines.metadata,
        "--log",
        engines.log,
        "--pubsub",
        engines.pubsub,
        "--data-dir",
        str(tmp_path / "data"),
        "--log-level",
        "info",
        "--connect-timeout",
        "60",
    ]
    gw_ports = [free_port(), free_port()]
    gateway_a = (
        Role(
            "gateway-a",
            [*common, "--role", "gateway", "--seed-demo", str(MACHINES)],
            logs,
            gw_ports[0],
        )
        .start()
        .wait_ready()
    )
    gateway_b = Role("gateway-b", [*common, "--role", "gateway"], logs, gw_ports[1]).start()

    def ingest(n: int) -> Role:
        devices = f"{engines.mqtt}?group=ingest&client_id=ingest-{n}&session_expiry=300"
        return Role(f"ingest-{n}", [*common, "--role", "ingest", "--devices", devices], logs)

    ingests = [ingest(1).start(), ingest(2).start()]
    distributes = [
        Role(f"distribute-{n}", [*common, "--role", "distribute"], logs).start() for n in (1, 2)
    ]
    roles = [gateway_a, gateway_b, *ingests, *distributes]
    simulate: subprocess.Popen[str] | None = None
    try:
        for role in roles[1:]:
            role.wait_ready()
        simulate = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "livedata",
                "simulate",
                "--mqtt",
                engines.mqtt,
                "--machines",
                str(MACHINES),
                "--log-level",
                "warning",
            ],
            stdout=(logs / "simulate.log").open("a"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        # the clock starts once every machine is connected (its start-up takes seconds
        # on a loaded machine: the live checks below count from here)
        deadline = time.monotonic() + 60
        while "machines:" not in (logs / "simulate.log").read_text():
            assert simulate.poll() is None, (logs / "simulate.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "simulate did not start in 60 s"
            time.sleep(0.1)
        chassis = default_chassis_ids(MACHINES)
        fields = tuple(FIELDS)
        clients = [
            Client(chassis[i], [gateway_a.url, gateway_b.url], ADMIN_TOKEN, fields)
            for i in range(5)
        ] + [
            Client(chassis[i], [gateway_b.url, gateway_a.url], ADMIN_TOKEN, fields)
            for i in range(5, 10)
        ]
        started = time.time()

        async def drive() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(c.run(stop)) for c in clients]
            await asyncio.sleep(KILL_AT_S)
            for role in (ingests[0], distributes[0], gateway_a):
                role.kill()
            await asyncio.sleep(3)
            ingests[0] = ingest(1).start()  # restarted like systemd would, same client id
            await asyncio.to_thread(ingests[0].wait_ready)
            await asyncio.sleep(RUN_S - KILL_AT_S - 3)
            stop.set()
            await asyncio.gather(*tasks)

        asyncio.run(drive())
        simulate.send_signal(signal.SIGINT)
        assert simulate.wait(20) == 0  # it stops by itself (`offline` published), status 0
        time.sleep(6)  # the last acknowledgements and batches

        # Live: every client got its fields at about 1 Hz before the kills, and after them
        # the clients of the killed gateway moved to the other one and kept receiving.
        for client in clients:
            live = [(t, m) for t, m in client.received if m["type"] == "LIVE_DATA"]
            assert all(set(m["payload"]) == set(FIELDS) for _, m in live), client.chassis
            before = [t for t, _ in live if started + 4 <= t < started + KILL_AT_S]
            assert len(before) >= (KILL_AT_S - 4) * 0.8, (client.chassis, len(before))
            after = [t for t, _ in live if t > started + KILL_AT_S + 15]
            assert len(after) >= 3, (client.chassis, len(after), client.used)
        moved = [c for c in clients[:5]]
        assert all(c.used[-1] == gateway_b.url for c in moved)

        # Stored: every second of every machine exactly once, with the values it sent.
        async def check_store() -> None:
            store = ClickHouseStore(engines.store)
            await store.start()
            try:
                names = [s.name for s in CanDecoder.from_dbc(DBC_PATH.read_text()).signals()]
                now = int(time.time() * 1000)
                for chassis_id in chassis:
                    series = await store.query(
                        ORG, chassis_id, MsgType.VEHICLE_CAN, names, now - 600_000, now
                    )
                    stamps = [ts for ts, _ in series["engine_rpm"]]
                    assert len(stamps) >= RUN_S - 3, (chassis_id, len(stamps))
                    gaps = [b - a for a, b in itertools.pairwise(stamps)]
                    assert set(gaps) == {1000}, (chassis_id, sorted(set(gaps)))
                    expected = expected_values(chassis_id, stamps[0], stamps[-1])
                    for name in names:
                        got = dict(series[name])
                        assert set(got) == set(stamps), (chassis_id, name)
                        for ts, value in got.items():
                            assert value == expected[ts][name], (chassis_id, name, ts)
            finally:
                await store.close()

        asyncio.run(check_store())

        # The roles left stop by themselves on SIGINT (their runtime closed), status 0.
        alive = [gateway_b, *ingests, distributes[1]]
        for role in alive:
            role.interrupt()
        for role in alive:
            assert role.process is not None
            assert role.process.wait(30) == 0, role.name
    finally:
        if simulate is not None:
            stop_process(simulate)
        for role in roles + ingests:
            role.stop()
