"""`livedata import`: progress, summary, a killed import resumed, one-line errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import can
import pyarrow.parquet as pq
import pytest

from livedata.cli.main import main
from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.metadata import Metadata
from livedata.sim.demo import ORG, seed_demo
from livedata.sim.machine import Machine
from livedata.store import open_store

pytestmark = pytest.mark.usefixtures("plain_logging")

LOGS = Path(__file__).resolve().parent.parent / "files" / "logs"
START_S = 1_768_471_200
SECONDS = 2_000
REPEAT = 10
"""Each second's 12 frames (11 signals messages and the engine's DM1) are sent ten times (100 ms cycle): 240,000 frames in all."""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server's data directory: the demo organisation, machines L1 and L2 with the loader DBC."""
    path = tmp_path_factory.mktemp("data")

    async def seed() -> None:
        meta = Metadata(f"sqlite:///{path}/metadata.db")
        await meta.start()
        await seed_demo(meta, ["L1", "L2", "L3"])
        await meta.close()
        store = open_store(f"sqlite:///{path}/telemetry.db")
        await store.start()
        await store.close()

    asyncio.run(seed())
    return path


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A candump log of the simulator, 2,000 s at 10 Hz per message."""
    path = tmp_path_factory.mktemp("logs") / "big.log"
    machine = Machine("L1", CanDecoder.from_dbc(builtin_dbc()), 7)
    with can.Logger(str(path)) as writer:
        for second in range(SECONDS):
            frames, _ = machine.step(0)
            for rep in range(REPEAT):
                for i, f in enumerate(frames):
                    writer.on_message_received(
                        can.Message(
                            timestamp=START_S + second + rep / REPEAT + i / 1000,
                            arbitration_id=f.arbitration_id,
                            is_extended_id=f.is_extended,
                            data=f.data,
                        )
                    )
    return path


def livedata(*args: str, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "livedata", *args, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TZ": "UTC"},
    )


def points(data_dir: Path, chassis: str) -> int:
    with sqlite3.connect(data_dir / "telemetry.db") as conn:
        (n,) = conn.execute(
            "SELECT COALESCE(SUM(n), 0) FROM records JOIN streams USING (stream_id) "
            "WHERE streams.chassis = ?",
            (chassis,),
        ).fetchone()
    return int(n)


def test_import_prints_progress_and_summary(data_dir: Path, big_log: Path) -> None:
    """A large import shows rows, frames/s and its end on stderr, and the summary on stdout."""
    proc = livedata("import", ORG, "L2", str(big_log), "--batch", "200", data_dir=data_dir)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("big.log  100.0%  240,000 frames  2,000 rows")
    assert "frames/s  in 0:00:" in last
    assert "240,000 frames: 240,000 decoded, 0 unknown ids, 0 errors" in out
    assert (
        "stored 2,000 rows (30,000 values) from 2026-01-15T10:00:00.000Z to 2026-01-15T10:33:19.000Z"
        in out
    )
    assert points(data_dir, "L2") == 30_000


def test_killed_import_resumes_and_stores_each_value_once(data_dir: Path, big_log: Path) -> None:
    """An import killed (SIGKILL) after its first batches resumes from its checkpoint; rows as a clean run."""
    proc = livedata("import", ORG, "L1", str(big_log), "--batch", "100", data_dir=data_dir)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "frames/s" in first
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    stored = points(data_dir, "L1")
    assert 0 < stored < 30_000
    assert list((data_dir / "imports").glob("*.json"))

    again = livedata("import", ORG, "L1", str(big_log), "--batch", "100", data_dir=data_dir)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "(resumed after message " in out
    assert "240,000 frames: 240,000 decoded" in out
    assert points(data_dir, "L1") == 30_000
    assert not list((data_dir / "imports").glob("*.json"))

    twice = livedata("import", ORG, "L1", str(big_log), "--restart", data_dir=data_dir)
    out, err = twice.communicate(timeout=120)
    assert twice.returncode == 0, err
    assert points(data_dir, "L1") == 30_000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["L1", str(LOGS / "corrupt.log")], "error: corrupt.log line 4: cannot read .log data"),
        (["L1", str(LOGS / "nothing.log")], "error: cannot read"),
        (["NOPE", str(LOGS / "loader.log")], "error: machine 'NOPE' not found"),
        (["L1", str(LOGS / "loader.log"), "--start", "yesterday"], "is not a time"),
    ],
)
def test_bad_import_is_a_one_line_error(
    data_dir: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad file, machine or flag ends with one `error: …` line naming the problem."""
    try:
        code = main(["import", ORG, *args, "--data-dir", str(data_dir)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err.strip().splitlines()[-1]
    assert "Traceback" not in err


def test_export_writes_what_import_stored(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`livedata export` writes CSV and Parquet files of an imported log, with a progress line."""
    log = str(LOGS / "handwritten.log")
    assert main(["import", ORG, "L3", log, "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    span = ["--from", "2026-01-15T11:00:00Z", "--to", "2026-01-15T11:00:01Z"]
    csv = tmp_path / "run.csv"
    assert (
        main(
            [
                "export",
                ORG,
                "L3",
                *span,
                "--fields",
                "engine_rpm,bucket_angle",
                "-o",
                str(csv),
                "--data-dir",
                str(data_dir),
            ]
        )
        == 0
    )
    assert csv.read_text() == (
        "time,engine_rpm [rpm],bucket_angle [deg]\n"
        "2026-01-15T11:00:00.000Z,1600.0,\n"
        "2026-01-15T11:00:01.000Z,,-90\n"
    )
    out, err = capsys.readouterr()
    assert "run.csv: 2 rows, 2 values, 2 fields" in out
    assert err.strip().splitlines()[-1].startswith("run.csv  100.0%  2 values  2 rows")
    parquet = tmp_path / "run.parquet"
    assert main(["export", ORG, "L3", *span, "-o", str(parquet), "--data-dir", str(data_dir)]) == 0
    table = pq.read_table(parquet).to_pydict()
    assert table["coolant_temp"] == [50.0, None] and table["oil_temp_hydraulic"] == [None, 80.0]
    assert not list(tmp_path.glob("*.part"))
