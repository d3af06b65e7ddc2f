"""The gateway's fleet state seeds the machines it meets from the store, in batched reads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from livedata.bus.memory import MemoryPubSub
from livedata.catalog import Catalog
from livedata.gateway.fanout import Fanout
from livedata.gateway.fleet import SEED_WINDOW_MS, OrgFleet
from livedata.metadata import Metadata
from livedata.model import Kind, Record
from livedata.store.base import LATEST_MANY_MAX
from livedata.store.memory import MemoryStore

RAW = "client_raw_data"


class CountingStore(MemoryStore):
    """A memory store that counts its per-machine and batched newest-timestamp reads."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.latest_ts_calls = 0
        self.batches: list[int] = []

    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        self.latest_ts_calls += 1
        return await super().latest_ts(tenant, chassis, msg_type)

    async def _latest_rows(
        self, tenant: str, chassis: Sequence[str]
    ) -> Iterable[tuple[str, str, int]]:
        self.batches.append(len(chassis))
        return await super()._latest_rows(tenant, chassis)


async def test_fleet_seeds_met_machines_with_their_newest_values(tmp_path: Path) -> None:
    """Machines met are seeded with each field's newest stored value (within the seed window
    before their newest record), their newest ts and GPS (stamped with it), in one newest-ts read per 500
    machines; machines without data stay empty and recent data counts as online."""
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
    assert store.latest_ts_calls == 0
    assert store.batches == [LATEST_MANY_MAX, 3]
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
    await fleet.close()
    await meta.close()
