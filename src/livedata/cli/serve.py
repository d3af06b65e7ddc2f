"""``livedata serve``: run the server roles without a simulated fleet."""

from __future__ import annotations

import argparse
from typing import Any

from livedata.cli.common import add_server_flags, serve, settings_from
from livedata.runtime import Runtime
from livedata.sim.demo import attach_seed


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="run ingest, distribute, alerts and the gateway",
        description=(
            "Run the server roles (ingest, distribute, alerts, gateway) in one process on the "
            "backends named by the URL flags, the environment (LIVEDATA_*) or a TOML file."
        ),
    )
    add_server_flags(parser)
    parser.add_argument(
        "--seed-demo",
        type=int,
        metavar="N",
        help="create the demo organisation with N machines (for `livedata simulate`)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    rt = Runtime(settings)
    if args.seed_demo:
        attach_seed(rt, args.seed_demo)
    else:
        rt.on_started.append(lambda: _first_steps(rt, args))
    return serve(settings, rt, lambda url: print(f"livedata is serving on {url}", flush=True))


async def _first_steps(rt: Runtime, args: argparse.Namespace) -> None:
    """On an empty install: how to create the first organisation and its admin."""
    if await rt.meta.list_orgs():
        return
    where = " ".join(
        f"--{flag.replace('_', '-')} {getattr(args, flag)}"
        for flag in ("config", "data_dir", "metadata")
        if getattr(args, flag) is not None
    )
    where = f" {where}" if where else ""
    print(
        "no organisation yet: create the first one and its admin (password printed once) "
        f"with\n  livedata orgs create ORG --name 'Your company' --admin USERNAME{where}\n"
        "then log in at the URL below and add machines on the Machines page",
        flush=True,
    )
