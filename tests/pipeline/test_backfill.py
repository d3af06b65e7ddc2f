"""Importing recorded CAN logs (:mod:`livedata.pipeline.backfill`): golden files in every format."""

from __future__ import annotations

import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import can
import orjson
import pytest

from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.errors import InputError
from livedata.model import Kind
from livedata.pipeline.backfill import Checkpoint, Progress, candump_entries, import_log
from livedata.store import open_store
from livedata.store.base import Store
from livedata.store.frames import unpack_frames
from livedata.store.memory import MemoryStore

LOGS = Path(__file__).resolve().parent.parent / "files" / "logs"
EXPECTED = orjson.loads((LOGS / "expected.json").read_bytes())
DECODER = CanDecoder.from_dbc(builtin_dbc())
FIELDS = sorted({name for _, values in EXPECTED["records"] for name in values})


def fresh() -> MemoryStore:
    """An empty in-memory store (``memory://NAME`` stores of one name share data)."""
    return MemoryStore(f"memory://{uuid.uuid4().hex}")


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """ASC and BLF keep local wall-clock times: the fixtures were recorded in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def rows(store: Store, chassis: str = "L1") -> dict[int, dict[str, object]]:
    """Everything stored for the machine, as {ts: {field: value}}."""
    series = await store.query("acme", chassis, "vehicle_can", FIELDS, 0, 2**62)
    out: dict[int, dict[str, object]] = {}
    for name, points in series.items():
        for ts, value in points:
            out.setdefault(ts, {})[name] = value
    return out


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".trc", ".csv", ".mf4"])
async def test_golden_file_of_each_format_stores_the_decoded_seconds(suffix: str) -> None:
    """Each format's recording of the simulator stores exactly the decoded values of each second."""
    store = fresh()
    summary = await import_log(store, DECODER, "acme", "L1", LOGS / f"loader{suffix}")
    expected = {ts: values for ts, values in EXPECTED["records"]}
    assert await rows(store) == expected
    assert (summary.frames, summary.decoded, summary.unknown, summary.errors) == (
        EXPECTED["frames"],
        EXPECTED["decoded"],
        EXPECTED["unknown"],
        0,
    )
    assert summary.records == len(expected)
    assert (summary.first_ts, summary.last_ts) == (min(expected), max(expected))


async def test_written_records_are_backfill_never_live() -> None:
    """Imported records are written to the store as backfill (nothing is published)."""
    written = []

    class Spy(MemoryStore):
        async def write(self, records):  # type: ignore[no-untyped-def]
            written.extend(records)
            return await super().write(records)

    await import_log(
        Spy(f"memory://{uuid.uuid4().hex}"), DECODER, "acme", "L1", LOGS / "loader.log"
    )
    assert written and {r.kind for r in written} == {Kind.BACKFILL}
    assert {r.msg_type for r in written} == {"vehicle_can"}


async def test_handwritten_candump_log_decodes_to_values_worked_out_by_hand() -> None:
    """A hand-written candump log: latest frame wins per second, mux pages, unknown and short frames."""
    store = fresh()
    summary = await import_log(store, DECODER, "acme", "L1", LOGS / "handwritten.log")
    assert await rows(store) == {
        1_768_474_800_000: {
            "engine_torque": 0,
            "engine_rpm": 1600.0,
            "coolant_temp": 50,
            "hydraulic_pressure": 200.0,
            "boom_angle": 30.0,
        },
        1_768_474_801_000: {"bucket_angle": -90, "oil_temp_hydraulic": 80},
    }
    assert (summary.frames, summary.decoded, summary.unknown, summary.errors) == (7, 5, 1, 1)
    assert summary.error_samples == ["frame 0x18FEEE00 (ET1): 0 bytes, expected 8"]


async def test_imported_seconds_keep_their_raw_frames() -> None:
    """Each imported second keeps its raw frames, which decode again to the stored values."""
    store = fresh()
    await import_log(store, DECODER, "acme", "L1", LOGS / "handwritten.log")
    blobs = await store.read_frames("acme", "L1", 0, 2**62)
    assert [b.ts for b in blobs] == [1_768_474_800_000, 1_768_474_801_000]
    assert sum(b.count for b in blobs) == 7
    stored = await rows(store)
    for blob in blobs:
        message = unpack_frames(blob)
        assert DECODER.decode(message.frames).values == stored[blob.ts]


async def test_corrupt_line_is_named_and_everything_before_it_is_stored() -> None:
    """A line python-can cannot parse stops the import with its line number; earlier seconds are stored."""
    store = fresh()
    with pytest.raises(InputError, match=r"corrupt\.log line 4: cannot read \.log data"):
        await import_log(store, DECODER, "acme", "L1", LOGS / "corrupt.log")
    stored = await rows(store)
    assert stored[1_768_474_800_000]["coolant_temp"] == 50
    assert stored[1_768_474_801_000] == {"coolant_temp": 51}
    assert 1_768_474_802_000 not in stored


async def test_truncated_blf_names_the_byte_offset(tmp_path: Path) -> None:
    """A BLF file cut short, or with a damaged object header, fails with the byte offset."""
    data = (LOGS / "loader.blf").read_bytes()
    damaged = tmp_path / "damaged.blf"
    damaged.write_bytes(data[:144] + b"XXXX" + data[148:])
    with pytest.raises(InputError, match=r"damaged\.blf near byte \d+: cannot read \.blf data"):
        await import_log(fresh(), DECODER, "acme", "L1", damaged)
    not_blf = tmp_path / "text.blf"
    not_blf.write_text("hello")
    with pytest.raises(InputError, match=r"text\.blf.*not a valid \.blf file"):
        await import_log(fresh(), DECODER, "acme", "L1", not_blf)


async def test_unknown_suffix_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    """An unsupported suffix lists the formats; a missing file says so."""
    with pytest.raises(InputError, match=r"unknown log format '\.txt'.*\.mf4"):
        await import_log(fresh(), DECODER, "acme", "L1", tmp_path / "a.txt")
    with pytest.raises(InputError, match="cannot read"):
        await import_log(fresh(), DECODER, "acme", "L1", tmp_path / "a.log")


async def test_relative_timestamps_need_a_start_time(tmp_path: Path) -> None:
    """A log that starts at 0 s is refused without a start time and shifted with one."""
    log = tmp_path / "relative.log"
    log.write_text(
        "(0.000000) can0 18FEEE00#5AFFFFFFFFFFFFFF\n(1.500000) can0 18FEEE00#5BFFFFFFFFFFFFFF\n"
    )
    store = fresh()
    with pytest.raises(InputError, match=r"relative to the recording's start.*--start"):
        await import_log(store, DECODER, "acme", "L1", log)
    await import_log(store, DECODER, "acme", "L1", log, start_ms=1_768_474_800_000)
    assert await rows(store) == {
        1_768_474_800_000: {"coolant_temp": 50},
        1_768_474_801_000: {"coolant_temp": 51},
    }


async def test_multi_packet_message_across_a_second_is_reassembled(tmp_path: Path) -> None:
    """A J1939 BAM (a 12-DTC DM1) whose packets straddle two seconds is one message, no error."""
    fixture = LOGS.parent / "can" / "dm1_multi.txt"
    packets = [line.split() for line in fixture.read_text().splitlines() if line[:1].isdigit()]
    log = tmp_path / "bam.log"
    start_s = 1_768_474_800.8  # packets 50 ms apart: the session ends in the next second
    log.write_text(
        "".join(
            f"({start_s + (int(ts) - int(packets[0][0])) / 1000:.6f}) can0 {frame}\n"
            for ts, frame in packets
        )
    )
    summary = await import_log(fresh(), DECODER, "acme", "L1", log)
    assert (summary.frames, summary.decoded, summary.unknown, summary.errors) == (9, 9, 0, 0)


async def test_another_machines_log_shows_as_unknown_ids() -> None:
    """A log of another id space stores nothing and counts every frame as unknown."""
    other = CanDecoder.from_dbc(
        'VERSION ""\nBU_: A\nBO_ 1 Other: 8 A\n SG_ x : 0|8@1+ (1,0) [0|255] "" A\n'
    )
    store = fresh()
    summary = await import_log(store, other, "acme", "L1", LOGS / "loader.log")
    assert summary.unknown == summary.frames == EXPECTED["frames"]
    assert summary.records == 0 and await rows(store) == {}


def stored_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT COALESCE(SUM(n), 0) FROM records").fetchone()
    return int(count)


async def test_interrupted_import_resumes_without_duplicates(tmp_path: Path) -> None:
    """An import stopped after its first batch resumes from the checkpoint; the rows equal a clean run's."""
    log = tmp_path / "loader.log"
    shutil.copy(LOGS / "loader.log", log)
    clean: Store = open_store(f"sqlite:///{tmp_path}/clean.db")
    await clean.start()
    full = await import_log(clean, DECODER, "acme", "L1", log, batch_records=3)
    await clean.close()

    store: Store = open_store(f"sqlite:///{tmp_path}/resumed.db")
    await store.start()
    checkpoint = Checkpoint(tmp_path / "imports" / "loader.json")
    seen: list[Progress] = []

    class Interrupted(Exception):
        pass

    def stop_after_two(p: Progress) -> None:
        seen.append(p)
        if len(seen) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        await import_log(
            store,
            DECODER,
            "acme",
            "L1",
            log,
            checkpoint=checkpoint,
            progress=stop_after_two,
            batch_records=3,
        )
    assert checkpoint.path.exists()
    resumed = await import_log(
        store, DECODER, "acme", "L1", log, checkpoint=checkpoint, batch_records=3
    )
    await store.close()
    assert resumed.resumed_at > 0
    assert not checkpoint.path.exists()
    assert same_points(tmp_path / "clean.db", tmp_path / "resumed.db")
    assert resumed.to_dict() | {"resumedAt": 0} == full.to_dict()


def same_points(a: Path, b: Path) -> bool:
    """Both databases hold the same number of points (and no duplicates: the key is unique)."""
    return stored_rows(a) == stored_rows(b) > 0


async def test_checkpoint_of_a_changed_file_is_ignored(tmp_path: Path) -> None:
    """After the file changed (size or time), its old checkpoint does not skip anything."""
    log = tmp_path / "loader.log"
    shutil.copy(LOGS / "loader.log", log)
    checkpoint = Checkpoint(tmp_path / "cp.json")
    checkpoint.save(log, 100, {"file": str(log)})
    assert checkpoint.load(log) is not None
    log.write_text(log.read_text() + "\n")
    assert checkpoint.load(log) is None
    summary = await import_log(fresh(), DECODER, "acme", "L1", log, checkpoint=checkpoint)
    assert summary.resumed_at == 0 and summary.frames == EXPECTED["frames"]


def test_candump_parser_agrees_with_python_can(tmp_path: Path) -> None:
    """The fast candump parser reads every line kind as python-can's CanutilsLogReader does."""
    lines = [
        "(1768474800.000000) can0 0CF00400#FFFF8D803EFFFFFF",
        "(1768474800.000123) vcan1 3A0#0007D0 R",
        "(1768474800.000200) can0 123#",
        "(1768474800.000300) can0 123#R",
        "(1768474800.000400) can0 00000123#R8 T",
        "(1768474800.000500) can0 18FEEE00##1112233445566778899AABBCC",
        "(1768474800.000600) can0 200000A0#0000000000000000",
        "",
        "(1768474800.000700) can0 7FF#DEADBEEF",
    ]
    log = tmp_path / "kinds.log"
    log.write_text("\n".join(lines) + "\n")
    ours = list(candump_entries(iter(lines)))
    with can.CanutilsLogReader(str(log)) as reader:
        theirs = [
            (
                m.timestamp,
                m.arbitration_id,
                m.is_extended_id,
                None if m.is_error_frame or m.is_remote_frame else bytes(m.data),
            )
            for m in reader
        ]
    error_frame = 6
    assert ours[:error_frame] == theirs[:error_frame] and ours[7:] == theirs[7:]
    assert ours[error_frame][3] is None and theirs[error_frame][3] is None
    with pytest.raises(ValueError, match="expected"):
        list(candump_entries(iter(["1768474800.0 can0 123#00"])))
