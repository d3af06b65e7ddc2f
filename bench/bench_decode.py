"""CAN decoding speed: livedata's compiled decoder against cantools, on the same frames.

For two databases -- the demo DBC (``livedata/dbc/loader.dbc``, 10 messages) and a
random large one (``--messages``, default 600, Intel/Motorola, signed, scaled, float
and multiplexed signals, made by ``tests/decode/dbcgen.py`` with a fixed seed) -- it
makes ``--frames`` (default 200,000) random frames spread over the database's ids
and times, in this one process:

* ``cantools decode_message``: ``db.decode_message(id, data, decode_choices=False)``
  per frame (the baseline);
* ``cantools decode_simple``: the message looked up in a dict, then
  ``message.decode_simple(data, False)`` per frame;
* ``livedata decode_frame``: :meth:`CanDecoder.decode_frame` per frame (a fresh dict
  per frame, as cantools returns one);
* ``livedata decode (batch)``: :meth:`CanDecoder.decode` on batches of 1,000 frames
  (what ingest calls once per device message: sorted by timestamp, one dict of
  latest values, errors counted).

Each is run ``--repeat`` (5) times, taking turns, and the best run is kept.  It prints frames/s
and the ratio to ``decode_message``, and checks first that ``decode_frame`` gives
cantools' values (rounded to the signal's resolution, as livedata stores them) for
every frame.  Takes about 30 s.

    python bench/bench_decode.py
    python bench/bench_decode.py --frames 50000 --messages 1000
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cantools
from cantools.database.can import Database

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.errors import DecodeError
from livedata.model import Frame
from tests.decode.dbcgen import random_database, random_frame, reference


def make_frames(db: Database, count: int, rng: random.Random) -> list[Frame]:
    """``count`` frames of random payload, cycling through the messages, every mux defined."""
    messages = db.messages
    return [
        Frame(i, m.frame_id, m.is_extended_frame, random_frame(m, rng))
        for i, m in ((i, messages[i % len(messages)]) for i in range(count))
    ]


def best_rates(runs: list[Callable[[], object]], frames: int, repeat: int) -> list[float]:
    """frames/s of each run, best of ``repeat``; the runs take turns, so load shared
    with other processes spreads over all of them alike."""
    best = [math.inf] * len(runs)
    for _ in range(repeat):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [frames / t for t in best]


def bench(title: str, decoder: CanDecoder, count: int, repeat: int) -> None:
    db = decoder.database
    rng = random.Random(11)
    frames = make_frames(db, count, rng)
    pairs = [(f.arbitration_id, f.data) for f in frames]
    mismatches = 0
    for f in frames:
        ref = reference(db.get_message_by_frame_id(f.arbitration_id), f.data)
        try:
            got: dict[str, float] | None = decoder.decode_frame(f.arbitration_id, f.data)
        except Exception:
            got = None
        mismatches += got != ref
    compiled = sum(c.compiled for c in decoder.compiled_messages())
    print(
        f"\n{title}: {len(db.messages)} messages ({compiled} compiled), "
        f"{count:,} frames; decode_frame differs from cantools on {mismatches} frames"
    )

    decode_message = db.decode_message
    by_id = {m.frame_id: m for m in db.messages}
    decode_frame = decoder.decode_frame
    batches = [frames[i : i + 1000] for i in range(0, count, 1000)]

    def run_message() -> None:
        for fid, data in pairs:
            decode_message(fid, data, decode_choices=False)

    def run_simple() -> None:
        for fid, data in pairs:
            by_id[fid].decode_simple(data, False)

    def run_frame() -> None:
        for fid, data in pairs:
            try:  # noqa: SIM105 - contextlib.suppress costs more than the decoding measured
                decode_frame(fid, data)
            except DecodeError:  # a random float can be NaN: refused
                pass

    def run_batch() -> None:
        for batch in batches:
            decoder.decode(batch)

    names = [
        "cantools decode_message",
        "cantools decode_simple",
        "livedata decode_frame",
        "livedata decode (batch)",
    ]
    rates = best_rates([run_message, run_simple, run_frame, run_batch], count, repeat)
    base = rates[0]
    rows = list(zip(names, rates, strict=True))
    for name, rate in rows:
        print(f"  {name:26} {rate:12,.0f} frames/s  {rate / base:5.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"cantools {cantools.__version__}, Python {sys.version.split()[0]}")
    bench(
        "demo DBC (loader.dbc)",
        CanDecoder.from_dbc(builtin_dbc("loader")),
        args.frames,
        args.repeat,
    )
    large = random_database(random.Random(5), args.messages, mux=True, j1939=True)
    bench(
        f"large J1939-like DBC ({args.messages} messages)",
        CanDecoder(large),
        args.frames,
        args.repeat,
    )
    odd = random_database(random.Random(5), args.messages, fd=True)
    bench(
        f"adversarial DBC ({args.messages} messages: CAN FD, Motorola, floats, 64-bit, 1/3 scales)",
        CanDecoder(odd),
        args.frames,
        args.repeat,
    )


if __name__ == "__main__":
    main()
