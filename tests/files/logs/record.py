"""Record the golden import fixtures: ``python tests/files/logs/record.py`` (run from the repo root).

Twenty seconds of the simulated wheel loader ``L1`` (seed 1) from 2026-01-15 10:00:00 UTC,
its frames spread over each second (10 ms apart) plus one frame per second of an id the
loader DBC does not define, written with python-can's writers in every format the
importer reads.  ``expected.json`` holds what the machine's DBC decodes from each
second's frames (the records an import must store) and the counters of the summary.
Files are written with ``TZ=UTC``: ASC and BLF keep local wall-clock times.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import can
import orjson

from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.model import Frame
from livedata.sim.machine import Machine

HERE = Path(__file__).resolve().parent
START_MS = 1_768_471_200_000
SECONDS = 20
UNKNOWN_ID = 0x7FF


def frames() -> list[list[Frame]]:
    """Per second, the frames as they appear in the log."""
    decoder = CanDecoder.from_dbc(builtin_dbc())
    machine = Machine("L1", decoder, 1)
    out = []
    for second in range(SECONDS):
        ts = START_MS + second * 1000
        sent, _ = machine.step(ts)
        spread = [
            Frame(ts + 10 * i, f.arbitration_id, f.is_extended, f.data) for i, f in enumerate(sent)
        ]
        spread.append(Frame(ts + 999, UNKNOWN_ID, False, bytes([second, 1, 2, 3])))
        out.append(spread)
    return out


def main() -> None:
    os.environ["TZ"] = "UTC"
    time.tzset()
    decoder = CanDecoder.from_dbc(builtin_dbc())
    seconds = frames()
    records, decoded, unknown = [], 0, 0
    for window in seconds:
        result = decoder.decode(window)
        records.append([window[0].ts - window[0].ts % 1000, result.values])
        decoded += result.frames
        unknown += result.unknown
    total = sum(len(w) for w in seconds)
    expected = {"frames": total, "decoded": decoded, "unknown": unknown, "records": records}
    (HERE / "expected.json").write_bytes(orjson.dumps(expected, option=orjson.OPT_INDENT_2) + b"\n")
    for suffix in (".log", ".asc", ".blf", ".trc", ".csv", ".mf4"):
        path = HERE / f"loader{suffix}"
        path.unlink(missing_ok=True)
        with can.Logger(str(path)) as writer:
            for window in seconds:
                for f in window:
                    writer.on_message_received(
                        can.Message(
                            timestamp=f.ts / 1000,
                            arbitration_id=f.arbitration_id,
                            is_extended_id=f.is_extended,
                            data=f.data,
                            channel=0,
                        )
                    )
    trc = HERE / "loader.trc"  # python-can writes the file's absolute path into a comment
    lines = trc.read_text().splitlines(keepends=True)
    trc.write_text("".join(";   loader.trc\n" if "loader.trc" in line else line for line in lines))


if __name__ == "__main__":
    main()
