"""The gateway's fleet state seeds the machines it meets from the store, in batched reads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from livedata.bus.memory import MemoryPubSub
from livedata.catalog import Catalog
from livedata.decode.can import CanDecoder
from livedata.gateway.fanout import Fanout
from livedata.gateway.fleet import SEED_WINDOW_MS, FleetMachine, OrgFleet, _seed_stream
from livedata.metadata import Metadata
from livedata.model import Kind, MsgType, Record, Value
from livedata.sim.demo import DBC_PATH, ORG, seed_demo
from livedata.sim.fleet import default_chassis_ids
from livedata.store import open_store
from livedata.store.base import LATEST_MANY_MAX, LatestWindow
from livedata.store.memory import MemoryStore
from tests.store.contract import typed

RAW = "client_raw_data"


class CountingStore(MemoryStore):
    """A memory store that counts its per-machine reads and its batched newest-timestamp and
    latest-value reads."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.per_machine = 0
        self.batches: list[int] = []
        self.value_batches: list[tuple[str, int]] = []
        for name in ("latest_ts", "query"):  # the per-machine reads
            setattr(self, name, self._counted(getattr(self, name)))

    def _counted(self, read: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any) -> Any:
            self.per_machine += 1
            return await read(*args)

        return counted

    async def _latest_rows(
        self, tenant: str, chassis: Sequence[str]
    ) -> Iterable[tuple[str, str, int]]:
        self.batches.append(len(chassis))
        return await super()._latest_rows(tenant, chassis)

    async def _latest_value_rows(
        self, tenant: str, msg_type: str, windows: Sequence[LatestWindow]
    ) -> Iterable[tuple[str, str, Value]]:
        self.value_batches.append((msg_type, len(windows)))
        return await super()._latest_value_rows(tenant, msg_type, windows)


async def test_fleet_seeds_met_machines_with_their_newest_values(tmp_path: Path) -> None:
    """Machines met are seeded with each field's newest stored value (within the seed window
    before their newest record), their newest ts and GPS (stamped with it), in one newest-ts
    read per 500 machines and one latest-value read per message type with data and 500
    machines (no per-machine read); machines without data stay empty and recent data counts
    as online."""
    meta = Metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    await meta.start()
    await meta.ensure_org("o", "O")
    count = LATEST_MANY_MAX + 3
    chassis = [f"M{i:04d}" for i in range(count)]
    for c in chassis:
        await meta.upsert_machine("o", c, c, "WL")
    now = int(time.time() * 1000)
    store = CountingStore(f"memory://{uuid.uuid4().hex}")
    old = now - 3_600_000
    records = [
        Record(
            "o", "M0000", RAW, old, Kind.REALTIME, {"speed": 1.0, "gps_lat": 1.0, "gps_lng": 2.0}
        ),
        Record("o", "M0000", RAW, old + 500, Kind.REALTIME, {"speed": 2.0}),
        Record("o", "M0000", RAW, old + 1_000, Kind.REALTIME, {"rpm": 900}),
        Record("o", "M0001", RAW, now - SEED_WINDOW_MS - 10, Kind.REALTIME, {"speed": 5.0}),
        Record("o", "M0001", RAW, now, Kind.REALTIME, {"rpm": 7}),
        Record("o", chassis[-1], RAW, old, Kind.REALTIME, {"speed": 3.0}),
    ]
    await store.write(records)
    await meta.add_fields("o", "M0000", RAW, ["speed", "rpm", "gps_lat", "gps_lng"])
    await meta.add_fields("o", "M0001", RAW, ["speed", "rpm"])
    await meta.add_fields("o", chassis[-1], RAW, ["speed"])
    fleet = OrgFleet(
        Fanout(MemoryPubSub(f"memory://{uuid.uuid4().hex}")), store, meta, Catalog(meta), "o"
    )
    await fleet.ensure()
    assert store.per_machine == 0
    assert store.batches == [LATEST_MANY_MAX, 3]
    assert store.value_batches == [(RAW, 3)]
    first, second, last = (
        fleet.machines["M0000"],
        fleet.machines["M0001"],
        fleet.machines[chassis[-1]],
    )
    assert first.values == {RAW: {"speed": 2.0, "rpm": 900, "gps_lat": 1.0, "gps_lng": 2.0}}
    assert first.last_seen == old + 1_000 and first.gps == (1.0, 2.0, old + 1_000)
    assert not first.online(time.monotonic())
    assert second.values == {RAW: {"rpm": 7}}  # speed is older than the seed window
    assert second.last_seen == now and second.online(time.monotonic())
    assert last.values == {RAW: {"speed": 3.0}} and last.last_seen == old
    assert fleet.machines["M0002"].values == {} and fleet.machines["M0002"].last_seen is None
    await fleet.ensure(force=True)  # machines already known are not seeded again
    assert store.batches == [LATEST_MANY_MAX, 3]
    assert store.value_batches == [(RAW, 3)]
    await fleet.close()
    await meta.close()


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_fleet_seeds_what_the_per_machine_query_gave(tmp_path: Path, backend: str) -> None:
    """On the same data, the batched seeding gives every machine exactly the values, newest ts
    and GPS that one query per machine and message type over its seed window gave (seeded
    into the machine the same way)."""
    count = LATEST_MANY_MAX + 40
    chassis = default_chassis_ids(count)
    meta = Metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    await meta.start()
    await seed_demo(meta, chassis)
    signals = [s.name for s in CanDecoder.from_dbc(DBC_PATH.read_text()).signals()]
    raw = ["cpu_usage", "gps_lat", "gps_lng", "note"]
    url = f"memory://{uuid.uuid4().hex}" if backend == "memory" else f"sqlite:///{tmp_path}/t.db"
    store = open_store(url)
    await store.start()
    now = int(time.time() * 1000)
    records = []
    for n, c in enumerate(chassis):
        if n % 11 == 0:
            continue  # no data
        await meta.add_fields(ORG, c, MsgType.CLIENT_RAW_DATA, raw)
        base = now - (3_600_000 if n % 4 == 0 else 1_500) + n  # offline or online
        for k in range(4):
            ts = base + k * 900  # the first record is outside the seed window
            can = {
                name: float(n + k)
                for i, name in enumerate(signals)
                if (i % 4 == 0) == (k == 0) and (i + k) % 3  # fields missing in some records
            }
            records.append(Record(ORG, c, MsgType.VEHICLE_CAN, ts, Kind.REALTIME, can))
            if n % 3 and k % 2 == n % 2:
                values: dict[str, Value] = {"cpu_usage": n * 10 + k, "note": f"k{k}"}
                if k < 2:
                    values |= {"gps_lat": float(n), "gps_lng": float(k)}
                records.append(
                    Record(ORG, c, MsgType.CLIENT_RAW_DATA, ts + 1, Kind.REALTIME, values)
                )
    await store.write(records)
    catalog = Catalog(meta)
    expected = {c: FleetMachine(c, "", "") for c in chassis}
    for c, machine in expected.items():  # the seeding of the previous version
        info = await catalog.machine(ORG, c)
        assert info is not None
        for msg_type in MsgType:
            latest = await store.latest_ts(ORG, c, msg_type.value)
            if latest is None:
                continue
            names = [f["name"] for f in await catalog.fields(info, msg_type.value)]
            series = await store.query(
                ORG, c, msg_type.value, names, latest - SEED_WINDOW_MS, latest, 10
            )
            values = {n: points[-1][1] for n, points in series.items() if points}
            _seed_stream(machine, msg_type.value, values, latest)
    fleet = OrgFleet(
        Fanout(MemoryPubSub(f"memory://{uuid.uuid4().hex}")), store, meta, catalog, ORG
    )
    await fleet.ensure()
    assert len(fleet.machines) == count
    for c, machine in fleet.machines.items():
        old = expected[c]
        assert {t: typed(v) for t, v in machine.values.items()} == {
            t: typed(v) for t, v in old.values.items()
        }, c
        assert (machine.last_seen, machine.gps) == (old.last_seen, old.gps), c
    assert sum(1 for m in fleet.machines.values() if m.values.get(MsgType.CLIENT_RAW_DATA)) > 200
    await fleet.close()
    await store.close()
    await meta.close()
