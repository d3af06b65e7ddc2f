"""`livedata redecode`: a range of a machine decoded again from its raw frames, with progress;
one-line errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from livedata.cli.main import main
from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.metadata import Metadata
from livedata.model import DeviceMessage, Kind, MsgType, Record
from livedata.sim.demo import ORG, seed_demo
from livedata.sim.machine import Machine
from livedata.store import open_store
from livedata.store.frames import pack_frames

pytestmark = pytest.mark.usefixtures("plain_logging")

T0 = 1_768_471_200_000
SECONDS = 120
DOUBLED = builtin_dbc().replace(
    "engine_rpm : 24|16@1+ (0.125,0) [0|3000]", "engine_rpm : 24|16@1+ (0.25,0) [0|6000]"
)


def stored_rpm(data_dir: Path) -> list[tuple[int, float]]:
    async def read() -> list[tuple[int, float]]:
        store = open_store(f"sqlite:///{data_dir}/telemetry.db")
        await store.start()
        try:
            got = await store.query(ORG, "L1", "vehicle_can", ["engine_rpm"], T0, T0 + 10**6)
        finally:
            await store.close()
        return [(ts, float(v)) for ts, v in got["engine_rpm"]]

    return asyncio.run(read())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A server's data directory: machine L1 with two minutes of values and raw frames, and
    a corrected DBC (engine_rpm's scale doubled); returns it and the DBC's id."""
    path = tmp_path_factory.mktemp("data")

    async def seed() -> int:
        meta = Metadata(f"sqlite:///{path}/metadata.db")
        await meta.start()
        await seed_demo(meta, ["L1"])
        corrected = await meta.add_dbc(ORG, "loader.dbc", DOUBLED)
        await meta.close()
        store = open_store(f"sqlite:///{path}/telemetry.db")
        await store.start()
        decoder = CanDecoder.from_dbc(builtin_dbc())
        machine = Machine("L1", decoder, 3)
        records, blobs = [], []
        for s in range(SECONDS):
            ts = T0 + s * 1000
            frames, _ = machine.step(ts)
            values = decoder.decode(frames).values
            records.append(Record(ORG, "L1", "vehicle_can", ts, Kind.REALTIME, dict(values)))
            msg = DeviceMessage(ORG, "L1", MsgType.VEHICLE_CAN, ts, frames=tuple(frames))
            blobs.append(pack_frames(msg, ts))
        await store.write(records)
        await store.write_frames(blobs)
        await store.close()
        return corrected.id

    return path, asyncio.run(seed())


def test_redecode_replaces_the_range_with_progress(
    data_dir: tuple[Path, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """The minute asked for is decoded with the corrected DBC (rpm doubled), the rest stays;
    a progress line on stderr, a summary on stdout."""
    path, dbc_id = data_dir
    before = stored_rpm(path)
    start, end = T0 + 30_000, T0 + 89_999
    args = ["redecode", ORG, "--machines", "L1", "--from", str(start), "--to", str(end)]
    assert main([*args, "--dbc", str(dbc_id), "--data-dir", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "60 seconds of raw frames re-decoded" in out and "0 frame errors" in out
    assert err.startswith("redecode") and "100.0%" in err and "60 rows" in err
    assert stored_rpm(path) == [(ts, v * 2 if start <= ts <= end else v) for ts, v in before]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--machines", "nope", "--from", "0", "--to", "1"], "machine 'nope' not found"),
        (["--machines", "L1", "--from", "5", "--to", "1"], "from (5) is after to (1)"),
        (["--machines", "L1", "--from", "0", "--to", "1", "--dbc", "999"], "DBC file 999"),
    ],
)
def test_bad_redecode_is_a_one_line_error(
    data_dir: tuple[Path, int], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Unknown machine, reversed range, unknown DBC: `error: …` and status 2, no traceback."""
    path, _ = data_dir
    assert main(["redecode", ORG, *args, "--data-dir", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
