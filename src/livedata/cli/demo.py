"""``livedata demo``: everything in one process with a simulated fleet."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from livedata.cli.common import add_server_flags, serve, settings_from
from livedata.runtime import Runtime
from livedata.sim.demo import ADMIN, ORG, attach_demo


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="run everything in one process with a simulated fleet",
        description=(
            "Run the embedded shape (SQLite, in-process bus) with a simulated fleet of wheel "
            f"loaders in organisation {ORG!r}, and serve the Live Data page. The fleet sends "
            "CAN frames encoded with the bundled DBC and device metrics once a second; the "
            "last two minutes are created at start so the charts open filled. The first start "
            "creates the user 'admin' and prints its password once."
        ),
    )
    add_server_flags(parser)
    parser.add_argument("--machines", type=int, help="simulated machines (default 5)")
    parser.add_argument(
        "--period",
        type=float,
        help="seconds between two messages of a machine (default 1; 0.1 makes a 10 Hz fleet)",
    )
    parser.add_argument(
        "--live-history-seconds",
        type=float,
        help="how long live channels keep messages for reconnecting clients (default 180)",
    )
    parser.add_argument(
        "--client-stall-seconds",
        type=float,
        help="disconnect a live client that takes nothing for this long (default 30)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(
        args,
        machines=args.machines,
        fleet_period=args.period,
        live_history_seconds=args.live_history_seconds,
        client_stall_seconds=args.client_stall_seconds,
    )
    rt = Runtime(settings)
    passwords: list[str] = []
    chassis_ids = attach_demo(rt, settings.machines, passwords.append)

    def announce(url: str) -> None:
        print(f"livedata demo is running: open {url}", flush=True)
        print(f"organisation: {ORG}", flush=True)
        if passwords:
            print(f"log in as {ADMIN} with password: {passwords[0]}", flush=True)
            print("(shown this once; it is stored hashed only)", flush=True)
        else:
            print(
                f"log in as {ADMIN} with the password shown at the first start "
                f"(forgot it? livedata users passwd {ADMIN} --data-dir …)",
                flush=True,
            )
        print(f"machines: {' '.join(chassis_ids)}", flush=True)
        print(f"data directory: {settings.data_dir.resolve()}", flush=True)
        sys.stdout.flush()

    return serve(settings, rt, announce)
