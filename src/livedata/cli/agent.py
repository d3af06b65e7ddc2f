"""``livedata agent``: the edge agent on a machine (see :mod:`livedata.agent.agent`).

::

    livedata agent --mqtt mqtt://broker:1883 --org demo --chassis WL-0001 \\
        --can-interface socketcan --can-channel can0 --gps-lat 59.33 --gps-lng 18.06
    livedata agent … --can-log drive.asc        # replay a recorded log (looping)

``--can-log`` takes any file python-can's ``LogReader`` reads (``.asc``, ``.blf``,
``.csv``, ``.log``, ``.trc`` …); it is checked at start (unreadable or empty: an
error, exit status 2) and replayed at its recorded pace, frames stamped as read.

With per-device credentials (``livedata devices secret ORG CHASSIS``, or the
Machines page / API when a machine is provisioned) the agent logs in as
``{org}/{chassis}`` with its secret, read from ``--secret-file`` (first line), the
environment variable ``LIVEDATA_AGENT_SECRET`` or the ``--config`` TOML file
(``mqtt``, ``org``, ``chassis``, ``secret``), never from the command line (it would
show in ``ps``).

The server must know the machine (``livedata serve --seed-demo N`` creates
``WL-0001`` … in organisation ``demo``).  Ctrl-C or SIGTERM stops it cleanly
(``offline`` published); the spool and the real-time state stay on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tomllib
from pathlib import Path
from typing import Any

from livedata.auth.mosquitto import device_url
from livedata.cli.signals import cancel_on_signals
from livedata.errors import ConfigError
from livedata.model import valid_id
from livedata.observe import setup_logging


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the edge agent: CAN bus and metrics to MQTT",
        description="Read a CAN bus (python-can) and device metrics, publish them over MQTT "
        "once per second, obey startMs/endMs, spool while the broker is away.",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file with mqtt, org, chassis and secret (the file the server gives when a "
        "machine is provisioned); flags override it",
    )
    p.add_argument("--mqtt", metavar="URL", help="mqtt://[user:pass@]host:port")
    p.add_argument("--org", help="organisation id (default demo)")
    p.add_argument("--chassis", help="this machine's chassis id")
    p.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help="this machine's secret (first line); MQTT username ORG/CHASSIS "
        "(also LIVEDATA_AGENT_SECRET)",
    )
    p.add_argument("--can-interface", default="virtual", help="python-can interface (virtual)")
    p.add_argument("--can-channel", default="0", help="python-can channel (0)")
    p.add_argument("--can-log", type=Path, help="replay this recorded CAN log instead of a bus")
    p.add_argument("--gps-lat", type=float, help="fixed GPS latitude")
    p.add_argument("--gps-lng", type=float, help="fixed GPS longitude")
    p.add_argument("--data-dir", type=Path, default=Path("livedata-agent"), help="state + spool")
    p.add_argument("--spool-max-rows", type=int, default=100_000)
    p.add_argument("--spool-max-mb", type=float, default=64.0)
    p.add_argument("--backfill-rate", type=float, default=20.0, help="spooled messages/s (20)")
    p.add_argument(
        "--no-history-when-stopped",
        action="store_true",
        help="while real-time is off send nothing (default: send as backfill, for history)",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from livedata.agent import Agent, AgentConfig

    config_file = _config_file(args.config)
    args.mqtt = args.mqtt or config_file.get("mqtt")
    args.org = args.org or config_file.get("org") or "demo"
    args.chassis = args.chassis or config_file.get("chassis")
    if not args.mqtt or not args.chassis:
        raise ConfigError("give --mqtt and --chassis (or a --config file naming them)")
    if not valid_id(args.org) or not valid_id(args.chassis):
        raise ConfigError("--org and --chassis must be valid ids")
    if (args.gps_lat is None) != (args.gps_lng is None):
        raise ConfigError("give both --gps-lat and --gps-lng, or neither")
    if not args.backfill_rate > 0:
        raise ConfigError("--backfill-rate must be positive")
    if args.spool_max_rows < 1 or not args.spool_max_mb > 0:
        raise ConfigError("--spool-max-rows and --spool-max-mb must be positive")
    mqtt = args.mqtt
    secret = _secret(args.secret_file) or config_file.get("secret", "")
    if secret:
        try:
            mqtt = device_url(args.mqtt, args.org, args.chassis, secret)
        except ValueError as exc:
            raise ConfigError(f"--mqtt: {exc}; with a secret give mqtt://host:port") from None
    setup_logging(args.log_level)
    config = AgentConfig(
        mqtt=mqtt,
        tenant=args.org,
        chassis=args.chassis,
        can_interface=args.can_interface,
        can_channel=args.can_channel,
        can_log=args.can_log,
        state_file=args.data_dir / "state.json",
        spool_file=args.data_dir / "spool.sqlite",
        spool_max_rows=args.spool_max_rows,
        spool_max_bytes=int(args.spool_max_mb * (1 << 20)),
        backfill_rate=args.backfill_rate,
        gps=(args.gps_lat, args.gps_lng) if args.gps_lat is not None else None,
        history_when_stopped=not args.no_history_when_stopped,
    )

    async def main() -> None:
        cancel_on_signals()  # SIGINT / SIGTERM: a clean stop; a second one cuts it short
        print(
            f"livedata agent: {args.org}/{args.chassis} → {args.mqtt.rpartition('@')[2]}",
            flush=True,
        )
        await Agent(config).run()

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(main())
    return 0


CONFIG_KEYS = ("mqtt", "org", "chassis", "secret")


def _config_file(path: Path | None) -> dict[str, str]:
    """The keys of ``--config`` (all strings; an unknown key is an error)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} is not TOML: {exc}") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown}; use {', '.join(CONFIG_KEYS)}")
    if not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"--config {path}: every value must be a string")
    return data


def _secret(path: Path | None) -> str:
    """The device secret from ``path`` or ``LIVEDATA_AGENT_SECRET``; empty when neither."""
    if path is None:
        return os.environ.get("LIVEDATA_AGENT_SECRET", "").strip()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read --secret-file {path}: {exc.strerror}") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"--secret-file {path} is empty")
    return lines[0].strip()
