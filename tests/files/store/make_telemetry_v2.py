"""How ``telemetry-v2.db`` and ``telemetry-v2.json`` were made: with the SQLite store of
schema version 2 (commit 47a124e, one row per point), ``PYTHONPATH=<that tree>/src python3
make_telemetry_v2.py telemetry-v2.db``, then ``PRAGMA journal_mode=DELETE`` and ``VACUUM``
on the file.  The JSON holds what that store's reads answered (``reads`` below);
``tests/store/test_sqlite.py`` upgrades a copy and expects the same answers."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from livedata.model import Kind, Record
from livedata.store.sqlite import SQLiteStore

T0 = 1_765_000_000_000
FIELDS = [f"f{j}" for j in range(6)] + ["state"]


def records() -> list[Record]:
    random.seed(7)
    out = []
    for s in range(150):
        for mt in ("vehicle_can", "client_raw_data"):
            vals: dict[str, float | int | str] = {
                f"f{j}": (round(random.gauss(50, 20), 3) if j % 3 else random.randint(-5, 5))
                for j in range(6)
            }
            if mt == "client_raw_data":
                vals["state"] = random.choice(["idle", "work"])
            if s % 97 == 0:
                vals["f1"] = float("inf")
            out.append(Record("demo", "m1", mt, T0 + s * 1000, Kind.REALTIME, vals))
    return out


async def reads(st: SQLiteStore) -> list[object]:
    out: list[object] = []
    for mt in ("vehicle_can", "client_raw_data"):
        out.append(await st.query("demo", "m1", mt, FIELDS, T0, T0 + 150_000))
        out.append(await st.query("demo", "m1", mt, FIELDS, T0 + 5_000, T0 + 120_000, limit=20))
        for a, b, n in (
            (T0, T0 + 150_000, 8),
            (T0 + 12_345, T0 + 133_333, 40),
            (T0, T0 + 150_000, 150),
        ):
            out.append(await st.downsample("demo", "m1", mt, FIELDS, a, b, n))
        out.append(await st.latest_ts("demo", "m1", mt))
    out.append(await st.machine_points("demo", "m1"))
    return out


async def main(path: str) -> list[object]:
    st = SQLiteStore(f"sqlite:///{path}")
    await st.start()
    rs = records()
    for i in range(0, len(rs), 100):
        await st.write(rs[i : i + 100])
    await st.replace_values(
        "demo",
        "m1",
        "vehicle_can",
        T0 + 100_000,
        T0 + 130_000,
        [Record("demo", "m1", "vehicle_can", T0 + 100_500, Kind.BACKFILL, {"f2": 1.25})],
        keep=("f3",),
    )
    answers = await reads(st)
    await st.close()
    return answers


if __name__ == "__main__":
    answers = asyncio.run(main(sys.argv[1]))
    Path(sys.argv[1].replace(".db", ".json")).write_text(json.dumps(answers))
