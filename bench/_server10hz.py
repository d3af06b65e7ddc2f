"""``livedata demo`` with a faster simulated fleet, for ``bench_live.py --rate 10``.

The demo CLI has no flag for the fleet's period (``Fleet(period=…)`` exists, and
``sim.demo.attach_demo`` builds the fleet with the default 1 s).  This script
runs exactly what ``livedata demo`` runs (``cli/demo.py``: settings, Runtime,
``attach_demo``, ``cli.common.serve``) with one change: the fleet that
``attach_demo`` constructs gets ``period=PERIOD``.  Each tick is stamped with
its wall-clock time, so at 0.1 s a record's ``ts`` is the wall-clock tenth of a
second at which it was produced.  The simulation still advances one simulated
second per tick (see ``Fleet``), which changes nothing for load.

    python bench/_server10hz.py --port 0 --data-dir DIR --machines 100 --period 0.1

It prints the same ``… open http://…`` line as the demo.  ``--loop uvloop`` runs
the same on uvloop (an experiment: ``cli.common.serve`` uses ``asyncio.run``, so
the demo runs on asyncio's own loop although uvicorn[standard] installs uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from livedata.cli.common import serve
from livedata.runtime import Runtime
from livedata.settings import load_settings
from livedata.sim import demo as sim_demo
from livedata.sim.fleet import Fleet


def fleet_with_period(period: float) -> type[Fleet]:
    class PeriodFleet(Fleet):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("period", period)
            super().__init__(*args, **kwargs)

    return PeriodFleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--period", type=float, default=0.1, help="fleet period in seconds")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (the demo uses asyncio's; uvloop is an experiment, see bench/README.md)",
    )
    args = parser.parse_args()

    settings = load_settings(
        {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "machines": args.machines,
            "log_level": args.log_level,
        }
    )
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sim_demo.Fleet = fleet_with_period(args.period)  # type: ignore[misc]
    rt = Runtime(settings)
    chassis_ids = sim_demo.attach_demo(rt, settings.machines)

    def announce(url: str) -> None:
        print(
            f"livedata demo (fleet period {args.period} s, {args.loop} loop) "
            f"is running: open {url}",
            flush=True,
        )
        print(f"machines: {' '.join(chassis_ids)}", flush=True)
        sys.stdout.flush()

    return serve(settings, rt, announce)


if __name__ == "__main__":
    sys.exit(main())
