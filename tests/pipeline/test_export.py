"""Export of history (:mod:`livedata.pipeline.export`): pandas and pyarrow read back the stored values."""

from __future__ import annotations

import io
import uuid

import pandas as pd
import pyarrow.parquet as pq
import pytest

from livedata.model import Kind, Record
from livedata.pipeline import export as export_mod
from livedata.pipeline.export import Export
from livedata.store.memory import MemoryStore

T0 = 1_768_471_200_000
FIELDS = ["speed", "gear", "note", "rare"]
UNITS = {"speed": "km/h", "gear": "", "note": "", "rare": "°C"}


def values_at(i: int) -> dict[str, float | int | str]:
    v: dict[str, float | int | str] = {"speed": i * 0.1 + 1 / 3, "gear": i % 5 - 1}
    if i % 7 == 0:
        v["note"] = f'stop, "{i}"\nline two' if i % 14 == 0 else f"n{i}"
    if i % 100 == 0:
        v["rare"] = -1e-300 if i % 200 == 0 else 2**53 - 1
    return v


async def stored(n: int, step_ms: int = 1000) -> MemoryStore:
    store = MemoryStore(f"memory://{uuid.uuid4().hex}")
    batch = [
        Record("acme", "L1", "client_raw_data", T0 + i * step_ms, Kind.REALTIME, values_at(i))
        for i in range(n)
    ]
    await store.write(batch)
    return store


async def collect(job: Export, fmt: str) -> bytes:
    return b"".join([block async for block in job.encode(fmt)])


def job_for(store: MemoryStore, n: int, step_ms: int = 1000, **kw: int) -> Export:
    end = T0 + (n - 1) * step_ms
    return Export(store, "acme", "L1", "client_raw_data", FIELDS, UNITS, T0, end, **kw)


def expected(n: int, step_ms: int = 1000) -> dict[int, dict[str, float | int | str]]:
    return {T0 + i * step_ms: values_at(i) for i in range(n)}


async def test_csv_reads_back_to_the_exact_stored_values() -> None:
    """pandas reads the CSV back to the stored values: floats bit for bit, ints, text, gaps empty."""
    store = await stored(1000)
    job = job_for(store, 1000)
    data = await collect(job, "csv")
    assert data.startswith(
        b"time,speed [km/h],gear,note,rare [\xc2\xb0C]\n2026-01-15T10:00:00.000Z,"
    )
    frame = pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""])
    assert len(frame) == 1000 == job.rows
    times = pd.to_datetime(frame["time"], utc=True).dt.as_unit("ms").astype("int64")
    stored_values = expected(1000)
    for ts, (_, row) in zip(times, frame.iterrows(), strict=True):
        want = stored_values[int(ts)]
        assert row["speed [km/h]"] == want["speed"]
        assert row["gear"] == want["gear"]
        assert (row["note"] if isinstance(row["note"], str) else None) == want.get("note")
        if "rare" in want:
            assert row["rare [°C]"] == want["rare"]
        else:
            assert pd.isna(row["rare [°C]"])


async def test_parquet_has_typed_columns_and_exact_values() -> None:
    """pyarrow reads typed columns (timestamp, double, string) with units and the stored values."""
    store = await stored(1000)
    table = pq.read_table(io.BytesIO(await collect(job_for(store, 1000), "parquet")))
    assert [str(t) for t in table.schema.types] == [
        "timestamp[ms, tz=UTC]",
        "double",
        "double",
        "string",
        "double",
    ]
    assert table.schema.field("speed").metadata == {b"unit": b"km/h"}
    got = table.to_pydict()
    want = expected(1000)
    for i, when in enumerate(got["time"]):
        values = want[int(when.timestamp() * 1000)]
        for name in FIELDS:
            assert got[name][i] == values.get(name)


async def test_dense_data_is_read_in_smaller_chunks_without_losing_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data denser than a chunk holds (a chunk comes back full) is read again in halves: every row kept."""
    monkeypatch.setattr(export_mod, "CHUNK_POINTS", 50)
    store = await stored(3000, step_ms=1)
    job = job_for(store, 3000, step_ms=1)
    frame = pd.read_csv(io.BytesIO(await collect(job, "csv")))
    assert len(frame) == 3000 and job.chunks >= 60
    assert list(frame["gear"]) == [values_at(i)["gear"] for i in range(3000)]


async def test_max_points_downsamples_each_field() -> None:
    """With maxPoints the export holds at most that many points per field (bucket min and max)."""
    store = await stored(5000)
    job = job_for(store, 5000, max_points=100)
    frame = pd.read_csv(io.BytesIO(await collect(job, "csv")))
    assert frame["speed [km/h]"].count() <= 100
    assert frame["speed [km/h]"].max() == values_at(4999)["speed"]
    assert frame["speed [km/h]"].min() == values_at(0)["speed"]


async def test_empty_range_gives_header_only_and_valid_parquet() -> None:
    """A range without data is a CSV with its header and an empty, readable Parquet file."""
    store = await stored(10)
    job = Export(store, "acme", "L1", "client_raw_data", FIELDS, UNITS, 0, 1000)
    assert await collect(job, "csv") == "time,speed [km/h],gear,note,rare [°C]\n".encode()
    table = pq.read_table(io.BytesIO(await collect(job, "parquet")))
    assert table.num_rows == 0 and table.column_names == ["time", *FIELDS]
