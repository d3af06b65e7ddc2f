"""Device payload decoding alone: CPU per message of :func:`livedata.codec.decode`.

The payloads are those of ``bench_mqtt_link.py``: ``--messages`` ``vehicle_can``
messages of the simulated wheel loader (100 machines, 12 frames each, 8 data bytes,
standard and extended ids), encoded as devices send them, plus as many
``client_raw_data`` payloads (a dozen values each).  For each code under test
(``--before TREE``: a checkout of the code before; and this checkout) a worker
process decodes them all, ``--rounds`` times, the codes taking turns so load from
other processes falls on both alike; the messages are held 1,000 at a time (as ingest
holds a batch) and the garbage collector runs as in the roles (``tune_gc``: what
the set-up made is frozen, the roles' thresholds), so its share of the
allocations is counted; then the same again with the collector off (the
decoding alone).  Printed: the best round's CPU µs per message of each kind per
code, and the ratio to the code before.

Run: ``python bench/bench_codec.py --before /tmp/base [--messages 20000 --rounds 5]``.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_mqtt_link import run_script  # noqa: E402

KEEP = 1000
"""Messages decoded and held at once (ingest holds a batch, then drops it)."""


def json_payloads(count: int) -> list[bytes]:
    import orjson

    return [
        orjson.dumps(
            {
                "v": 1,
                "ts": 1_700_000_000_000 + n * 1000,
                "values": {f"metric_{i}": n * 0.5 + i for i in range(12)},
            }
        )
        for n in range(count)
    ]


def worker(count: int) -> None:
    from bench.bench_mqtt_link import payloads

    from livedata.cli.common import tune_gc
    from livedata.codec import decode

    can = [p for _, p in payloads(count)]
    raw = json_payloads(count)
    tune_gc()  # as the roles do once started: the set-up is frozen, collections rarer
    out = {}
    for collect in (True, False):
        (gc.enable if collect else gc.disable)()
        for name, msg_type, batch in (
            ("vehicle_can", "vehicle_can", can),
            ("client_raw_data", "client_raw_data", raw),
        ):
            cpu0 = time.process_time()
            for start in range(0, len(batch), KEEP):
                kept = [decode("bench", "M000", msg_type, p) for p in batch[start : start + KEEP]]
            out[f"{name}{'' if collect else ' (gc off)'}"] = (
                (time.process_time() - cpu0) / len(batch) * 1e6
            )
            del kept
    print(json.dumps(out))


def run_worker(src: Path, count: int) -> dict[str, float]:
    result: dict[str, float] = run_script(__file__, src, "--worker", f"--messages={count}")
    return result


def best_rounds(
    rounds: int, before: Path | None, run: Callable[[Path], dict[str, float]]
) -> tuple[dict[str, Path], dict[str, dict[str, float]]]:
    """``run(src)`` ``rounds`` times for the code before (``before``'s ``src``, if given) and
    this checkout, taking turns; the codes and each one's best (lowest) figure of each name."""
    codes = {"after": ROOT / "src"}
    if before:
        codes = {"before": before / "src", **codes}
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name, src in codes.items():
            for kind, us in run(src).items():
                mine = best.setdefault(name, {})
                mine[kind] = min(us, mine.get(kind, us))
    return codes, best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code before")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.messages)
        return
    codes, best = best_rounds(args.rounds, args.before, lambda src: run_worker(src, args.messages))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.messages} messages of each kind")
    for kind in best["after"]:
        line = [f"{kind:26}"]
        for name in codes:
            line.append(f"{name} {best[name][kind]:6.2f} µs/message")
        if "before" in best:
            line.append(f"ratio {best['before'][kind] / best['after'][kind]:.2f}x")
        print("  ".join(line))


if __name__ == "__main__":
    main()
