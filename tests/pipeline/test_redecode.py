"""Re-decoding with real parts (SQLite metadata and store, the ingest role): raw frames kept
by ingest, one hour of one machine re-decoded with a corrected DBC, nothing else changed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from livedata.bus.memory import MemoryLog
from livedata.catalog import Catalog
from livedata.codec import encode
from livedata.decode.can import CanDecoder
from livedata.errors import Conflict, DecodeError, InputError, NotFound
from livedata.metadata import Metadata
from livedata.metadata.decoding import DecodeRange, machine_ranges, paint
from livedata.model import DeviceMessage, Kind, MsgType
from livedata.pipeline.ingest import Ingest
from livedata.pipeline.redecode import Redecoder
from livedata.sim.demo import DBC_PATH
from livedata.sim.machine import Machine
from livedata.store.base import Series
from livedata.store.frames import FrameBlob, pack_frames, unpack_frames
from livedata.store.sqlite import SQLiteStore
from tests.pipeline.faults import FlakyStore

T0 = 1_750_000_000_000
MINUTES = 64
SECONDS = MINUTES * 60
FIELDS = ["engine_rpm", "coolant_temp", "speed", "gear", "fuel_level"]
CORRECTED = "\n".join(
    line for line in DBC_PATH.read_text().splitlines() if "coolant_temp" not in line
).replace("engine_rpm : 24|16@1+ (0.125,0) [0|3000]", "engine_rpm : 24|16@1+ (0.25,0) [0|6000]")


@dataclass
class Parts:
    meta: Metadata
    store: FlakyStore
    ingest: Ingest
    redecoder: Redecoder
    v1: int
    v2: int


module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def parts(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Parts]:
    """Two machines, 64 minutes of frames each through ingest (the loader DBC, v1)."""
    tmp = tmp_path_factory.mktemp("redecode")
    meta = Metadata(f"sqlite:///{tmp}/meta.db")
    await meta.start()
    await meta.ensure_org("acme", "Acme")
    v1 = await meta.add_dbc("acme", "loader", DBC_PATH.read_text())
    v2 = await meta.add_dbc("acme", "loader", CORRECTED)
    for chassis in ("M1", "M2"):
        await meta.upsert_machine("acme", chassis, chassis, "WL")
    await meta.assign_model_dbc("acme", "WL", v1.id)
    store = FlakyStore(SQLiteStore(f"sqlite:///{tmp}/telemetry.db"))
    await store.start()
    catalog = Catalog(meta)
    log = MemoryLog(f"memory://{uuid.uuid4().hex}")
    ingest = Ingest(store, log, catalog)
    task = asyncio.create_task(ingest.run())
    decoder = CanDecoder.from_dbc(DBC_PATH.read_text())
    machines = {c: Machine(c, decoder, seed=i) for i, c in enumerate(("M1", "M2"))}
    for s in range(SECONDS):
        ts = T0 + s * 1000
        for chassis, machine in machines.items():
            frames, _ = machine.step(ts)
            msg = DeviceMessage("acme", chassis, MsgType.VEHICLE_CAN, ts, frames=tuple(frames))
            await ingest.handle(msg)
    deadline = time.monotonic() + 60
    while ingest.depth() or ingest.oldest_unstored() is not None:  # live goes first
        assert time.monotonic() < deadline, "ingest did not store everything"
        await asyncio.sleep(0.05)
    await ingest.frames.flush()
    await ingest.frames.write_ranges()
    yield Parts(meta, store, ingest, Redecoder(store, catalog, page=500), v1.id, v2.id)
    task.cancel()
    await store.close()
    await meta.close()


async def history(store: FlakyStore, chassis: str) -> Series:
    return await store.query("acme", chassis, "vehicle_can", FIELDS, T0, T0 + SECONDS * 1000)


def test_blob_round_trip_and_size() -> None:
    """A blob unpacks to the frames packed and is at most the wire encoding plus a stored
    block's 5 bytes; damaged bytes are a DecodeError, not a crash."""
    frames, _ = Machine("M1", CanDecoder.from_dbc(DBC_PATH.read_text()), 1).step(T0)
    msg = DeviceMessage("a", "M1", MsgType.VEHICLE_CAN, T0, Kind.BACKFILL, tuple(frames))
    blob = pack_frames(msg, T0 + 5)
    assert (blob.ts, blob.count) == (T0 + 5, len(frames))
    assert len(blob.data) <= len(encode(msg)) + 5
    back = unpack_frames(blob)
    assert (back.frames, back.kind, back.ts) == (msg.frames, Kind.BACKFILL, T0)
    with pytest.raises(DecodeError):
        unpack_frames(FrameBlob("a", "M1", T0, 1, b"\x00garbage"))


def test_paint_lays_later_rows_over_earlier_ones() -> None:
    """Later rows win where rows overlap; neighbours of one DBC merge."""
    rows = [
        DecodeRange(0, 100, 1, "v1", "ingest"),
        DecodeRange(40, 60, 2, "v2", "redecode"),
        DecodeRange(101, 150, 1, "v1", "ingest"),
        DecodeRange(55, 120, 2, "v2", "redecode"),
    ]
    assert paint(rows) == [
        DecodeRange(0, 39, 1, "v1", "ingest"),
        DecodeRange(40, 120, 2, "v2", "redecode"),
        DecodeRange(121, 150, 1, "v1", "ingest"),
    ]


@module_loop
async def test_one_hour_of_one_machine_redecoded(parts: Parts) -> None:
    """One hour of M1 re-decoded with a corrected DBC: engine_rpm doubled and coolant_temp
    gone there, everything else of M1 and all of M2 as before; progress counts the hour;
    the machine's timeline says which DBC decoded which range; running it again changes
    nothing."""
    before = {c: await history(parts.store, c) for c in ("M1", "M2")}
    assert len(before["M1"]["engine_rpm"]) == SECONDS
    assert await parts.store.count_frames("acme", "M1", T0, T0 + SECONDS * 1000) == SECONDS
    start, end = T0 + 120_000, T0 + 3_720_000 - 1

    job, started = await parts.redecoder.start("acme", ["M1"], start, end, parts.v2)
    assert started
    await parts.redecoder.wait("acme")
    assert job.to_dict() | {"started": 0, "finished": 0} == {
        "id": job.id, "state": "done", "machines": ["M1"], "from": start, "to": end,
        "dbcId": parts.v2, "total": 3_600, "done": 3_600, "progress": 1.0,
        "values": job.values, "errors": 0, "machine": None, "error": None,
        "started": 0, "finished": 0,
    }  # fmt: skip

    after = await history(parts.store, "M1")
    inside = lambda ts: start <= ts <= end  # noqa: E731
    assert after["engine_rpm"] == [
        (ts, v * 2 if inside(ts) else v) for ts, v in before["M1"]["engine_rpm"]
    ]
    assert after["coolant_temp"] == [p for p in before["M1"]["coolant_temp"] if not inside(p[0])]
    for name in ("speed", "gear", "fuel_level"):
        assert after[name] == before["M1"][name]
    assert await history(parts.store, "M2") == before["M2"]
    low = await parts.store.downsample(
        "acme", "M1", "vehicle_can", ["engine_rpm"], T0, T0 + SECONDS * 1000, 40
    )
    assert max(v for _, v in low["engine_rpm"]) == max(v for _, v in after["engine_rpm"])

    timeline = [r.to_dict() for r in await machine_ranges(parts.meta, "acme", "M1")]
    assert timeline == [
        {"from": T0, "to": start - 1, "dbcId": parts.v1, "dbc": "loader", "source": "ingest"},
        {"from": start, "to": end - 999, "dbcId": parts.v2, "dbc": "loader", "source": "redecode"},
        {"from": end - 998, "to": T0 + (SECONDS - 1) * 1000, "dbcId": parts.v1, "dbc": "loader",
         "source": "ingest"},
    ]  # fmt: skip
    assert len(await machine_ranges(parts.meta, "acme", "M2")) == 1

    again, started = await parts.redecoder.start("acme", ["M1"], start, end, parts.v2)
    assert started and again.id != job.id
    await parts.redecoder.wait("acme")
    assert await history(parts.store, "M1") == after


@module_loop
async def test_one_job_at_a_time_the_same_one_is_returned(parts: Parts) -> None:
    """While a job runs, starting it again returns it and another one is a Conflict; a
    running job can be cancelled; bad requests are refused before anything starts."""
    parts.store.gate.clear()  # the job waits at its first replacement
    try:
        job, started = await parts.redecoder.start("acme", ["M2"], T0, T0 + 59_999)
        assert started and job.state == "running"
        same, started = await parts.redecoder.start("acme", ["M2"], T0, T0 + 59_999)
        assert same is job and not started
        with pytest.raises(Conflict):
            await parts.redecoder.start("acme", ["M1"], T0, T0 + 59_999)
    finally:
        parts.store.gate.set()
    assert (await parts.redecoder.wait("acme")).state == "done"
    assert job.dbc_id is None and job.total == job.done == 60
    parts.store.gate.clear()
    try:
        stopped, _ = await parts.redecoder.start("acme", ["M2"], T0, T0 + 119_999)
        assert (await parts.redecoder.cancel("acme")) is stopped
    finally:
        parts.store.gate.set()
    assert stopped.state == "cancelled" and stopped.finished_ms is not None
    with pytest.raises(NotFound):
        await parts.redecoder.cancel("acme")
    with pytest.raises(NotFound):
        await parts.redecoder.start("acme", ["nope"], T0, T0 + 1)
    with pytest.raises(InputError):
        await parts.redecoder.start("acme", ["M1"], T0 + 1, T0)
    with pytest.raises(NotFound):
        await parts.redecoder.start("acme", ["M1"], T0, T0 + 1, dbc_id=99_999)
