"""``livedata demo``: everything in one process with a simulated fleet."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from livedata.cli.common import add_server_flags, serve, settings_from
from livedata.runtime import Runtime
from livedata.sim.demo import ORG, attach_demo


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="run everything in one process with a simulated fleet",
        description=(
            "Run the embedded shape (SQLite, in-process bus) with a simulated fleet of wheel "
            f"loaders in organisation {ORG!r}, and serve the Live Data page. The fleet sends "
            "CAN frames encoded with the bundled DBC and device metrics once a second; the "
            "last two minutes are created at start so the charts open filled."
        ),
    )
    add_server_flags(parser)
    parser.add_argument("--machines", type=int, help="simulated machines (default 5)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args, machines=args.machines)
    rt = Runtime(settings)
    chassis_ids = attach_demo(rt, settings.machines)

    def announce(url: str) -> None:
        print(f"livedata demo is running: open {url}", flush=True)
        print(f"organisation: {ORG}", flush=True)
        print(f"machines: {' '.join(chassis_ids)}", flush=True)
        print(f"data directory: {settings.data_dir.resolve()}", flush=True)
        sys.stdout.flush()

    return serve(settings, rt, announce)
