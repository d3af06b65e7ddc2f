"""How ``compressed-frames.db`` and ``compressed-frames.json`` were made: with the raw
frames packing of commit 623e5b7 (every blob compressed, zlib level 6),
``PYTHONPATH=<that tree>/src python3 make_compressed_frames.py compressed-frames.db``,
then ``PRAGMA journal_mode=DELETE`` and ``VACUUM`` on the file.  The JSON holds each
blob's (ts, count) and the wire payload it was packed from (hex);
``tests/pipeline/test_rawframes.py`` reads the file with today's code and expects them."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from livedata.codec import encode
from livedata.model import DeviceMessage, Frame, Kind, MsgType
from livedata.store.frames import pack_frames
from livedata.store.sqlite import SQLiteStore

T0 = 1_765_000_000_000


def messages() -> list[DeviceMessage]:
    """Seconds of 1 to 60 frames (the demo's 12 frames encode to 192 bytes)."""
    random.seed(11)
    out = []
    for s, n in enumerate((1, 5, 12, 12, 30, 60)):
        ts = T0 + s * 1000
        frames = tuple(
            Frame(
                ts + 10 * i, 0x18FEF100 + i % 4, True, bytes(random.randrange(4) for _ in range(8))
            )
            for i in range(n)
        )
        out.append(DeviceMessage("demo", "m1", MsgType.VEHICLE_CAN, ts, Kind.REALTIME, frames))
    return out


async def main(path: Path) -> None:
    msgs = messages()
    store = SQLiteStore(f"sqlite:///{path}")
    await store.start()
    try:
        await store.write_frames([pack_frames(m, m.ts) for m in msgs])
    finally:
        await store.close()
    expected = [{"ts": m.ts, "count": len(m.frames), "payload": encode(m).hex()} for m in msgs]
    path.with_suffix(".json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
