"""The ``livedata`` command: one module per subcommand, each with ``add_parser`` and ``run``.

Errors print one line, ``error: …``, and exit with status 2; ``--debug`` shows the
traceback instead.

An interrupt (SIGINT, Ctrl-C) stops every command, also one started with SIGINT
ignored: a shell without job control (a script's or CI's ``command &``) starts
background commands so, Python keeps the signal ignored and ``asyncio.run`` then
installs no handler of its own — ``kill -INT`` did nothing and ``livedata simulate``
ran on (:func:`livedata.cli.signals.interruptible`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from livedata import __version__
from livedata.cli.signals import interruptible
from livedata.errors import LivedataError

COMMANDS = {
    "demo": "demo",
    "serve": "serve",
    "simulate": "simulate",
    "agent": "agent",
    "users": "users",
    "devices": "devices",
    "orgs": "orgs",
    "machines": "machines",
    "import": "import_",
    "export": "export",
    "redecode": "redecode",
}
"""Each subcommand and its module in :mod:`livedata.cli`, in the order of the help.

A command's module is imported only when it is the one run (or the help lists them
all): ``livedata simulate`` does not import the server's modules (seconds on a busy
machine)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command's parser, with subcommand ``only`` (a key of :data:`COMMANDS`) or all."""
    parser = Parser(
        prog="livedata",
        description=(
            "Machine telemetry, live in the browser: machines send raw CAN frames and "
            "metrics, livedata decodes and stores them and pushes them to ECharts line "
            "charts over WebSocket, with the last minutes of history drawn first."
        ),
        epilog="Start with `livedata demo` and open the printed URL.",
    )
    parser.add_argument("--version", action="version", version=f"livedata {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(f"livedata.cli.{module}").add_parser(sub)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` runs, if it names one (the top-level options take no value,
    so it is the first argument that is not an option); ``None`` otherwise."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    interruptible()
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result: int = args.run(args)
        return result
    except LivedataError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
