"""``livedata simulate``: the simulated fleet as its own process, speaking MQTT like real machines.

The distributed shape, on one machine::

    mosquitto -p 1883
    livedata serve --devices mqtt://127.0.0.1:1883 --seed-demo 20
    livedata simulate --mqtt mqtt://127.0.0.1:1883 --machines 20

Each simulated machine (``WL-0001`` …, the ids the server's demo seeding creates) is
one MQTT connection with client id ``{org}/{chassis}``, a retained Last Will on its
status topic and the retained ``online`` status; once per period it publishes its
``vehicle_can`` batch (CAN frames encoded through the demo DBC) and its
``client_raw_data`` on ``livedata/{org}/{chassis}/telemetry/{msgType}`` at QoS 1
(see ``docs/device-protocol.md``).  Each machine answers the direct methods
``startMs`` / ``endMs`` (its real-time stream on / off) and ``getStatus``.

Ctrl-C (SIGINT) or SIGTERM publishes ``offline`` and disconnects cleanly, within
about 4 s (what is in flight is given 2 s to be acknowledged, the disconnect 2 s),
and the command exits with status 0 — also when it was started with SIGINT ignored,
as a script's ``livedata simulate … &`` is.  A second signal during that cuts it
short (:mod:`livedata.cli.signals`); a kill leaves it to the Last Will.

The simulator does **not** register the machines: the server must know them, or
ingest rejects (and counts) their messages as unknown.  ``livedata serve
--seed-demo N`` creates organisation ``demo`` with machines ``WL-0001`` …
``WL-000N`` and the DBC assignment; for another organisation create them through
the API.

Credentials.  With a broker that requires them (the configuration written by
``livedata devices mqtt-config``), each machine logs in as ``{org}/{chassis}`` with
its own secret: ``--secrets FILE`` names a JSON object ``{chassis: secret}``, as
written by ``livedata devices secret ORG --all --out FILE``; every simulated machine
must be in it.  Without ``--secrets`` all machines use the credentials in the URL
(``mqtt://user:pass@host:port``), if any.

Fast enough to load a cluster: one process publishes more than 10,000 messages/s
(``bench/bench_simulate.py``: about 19 µs of CPU per message against 270 µs before;
14 µs at 1 Hz since it runs on uvloop, when installed, as the server does).
At most ``--templates`` (100) machines are simulated step by step; the others replay
a template's pre-encoded seconds, 1-60 s apart from it, with their own timestamps
(:mod:`livedata.sim.ring`): real CAN frames of the DBC, the DM1 and the metrics,
just not a simulation of their own.  With ``--machines`` ≤ ``--templates`` every
machine is simulated exactly as the demo's fleet does.  Each machine keeps its own
MQTT connection (its presence and credentials are per connection), spoken through
:mod:`livedata.sim.connection`: a machine's second is one socket write.

Under stress: at most 10 messages per machine are unacknowledged and ``--spool`` (120)
more wait; when a connected machine's queue is full the tick waits for it.  If a tick
is not done before the next is due, the missed ticks are skipped (and counted), not
sent late.  While a machine is disconnected (it reconnects by itself with backoff) it
keeps its messages, and those that were in flight, in order, and sends them after the
reconnect before newer ones (at least once: one in flight across the loss may arrive
twice); the tick never waits for a disconnected machine.  Beyond ``--spool`` the
oldest are dropped and counted (in memory: 10,000 machines with full spools took 343
MiB more; a real agent spools to disk), as are those still waiting at exit.  The counts are logged every 10 s and once at exit: messages
acknowledged, dropped, waiting, machines connected, refused, ticks skipped.  If a
machine cannot connect at start, the command fails with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livedata.auth.mosquitto import device_url
from livedata.cli.signals import cancel_on_signals
from livedata.devices.base import MethodResult, answer_realtime
from livedata.errors import ConfigError
from livedata.model import valid_id
from livedata.observe import setup_logging
from livedata.sim import DBC_PATH, ORG
from livedata.sim.connection import SPOOL, SimDevice
from livedata.sim.fleet import default_chassis_ids
from livedata.sim.ring import TEMPLATES, PayloadRing

log = logging.getLogger("livedata.simulate")

CONNECT_CONCURRENCY = 200
REPORT_EVERY_S = 10.0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "simulate",
        help="run a simulated fleet that publishes over MQTT",
        description=(
            "Run simulated wheel loaders as separate MQTT clients against a broker, for the "
            "distributed shape. The server must know the machines: start it with "
            "`livedata serve --devices mqtt://HOST:PORT --seed-demo N`."
        ),
    )
    parser.add_argument(
        "--mqtt", required=True, metavar="URL", help="broker URL: mqtt://[user:pass@]host:port"
    )
    parser.add_argument("--machines", type=int, default=5, help="simulated machines (default 5)")
    parser.add_argument("--org", default=ORG, help=f"organisation id (default {ORG})")
    parser.add_argument(
        "--period", type=float, default=1.0, help="seconds between messages (default 1.0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument(
        "--templates",
        type=int,
        default=TEMPLATES,
        help=f"machines simulated; the others replay their payloads (default {TEMPLATES})",
    )
    parser.add_argument(
        "--spool",
        type=int,
        default=SPOOL,
        help="messages a machine keeps while disconnected, beyond them the oldest are dropped "
        f"(default {SPOOL}: a minute at 1 Hz)",
    )
    parser.add_argument(
        "--secrets",
        type=Path,
        metavar="FILE",
        help="per-machine MQTT passwords, JSON {chassis: secret} "
        "(`livedata devices secret ORG --all --out FILE`); username ORG/CHASSIS",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.machines <= 100_000:
        raise ConfigError(f"--machines must be 1 … 100000, not {args.machines}")
    if not args.period > 0:
        raise ConfigError(f"--period must be positive, not {args.period}")
    if not valid_id(args.org):
        raise ConfigError(f"--org {args.org!r} is not a valid organisation id")
    if not 1 <= args.templates <= 100_000:
        raise ConfigError(f"--templates must be 1 … 100000, not {args.templates}")
    if not 1 <= args.spool <= 100_000:
        raise ConfigError(f"--spool must be 1 … 100000, not {args.spool}")
    # cantools takes seconds to import: not for `--help`, and before the logging setup, as
    # what it imports logs a line
    importlib.import_module("livedata.decode.can")
    setup_logging(args.log_level)
    chassis_ids = default_chassis_ids(args.machines)
    urls = {c: args.mqtt for c in chassis_ids}
    if args.secrets is not None:
        urls = device_urls(args.mqtt, args.org, chassis_ids, read_secrets(args.secrets))
    devices = [SimDevice(urls[c], args.org, c, spool=args.spool) for c in chassis_ids]

    def announce() -> None:
        print(
            f"livedata simulate: {len(devices)} machines of organisation {args.org} "
            f"publishing to {args.mqtt.rpartition('@')[2]} every {args.period:g} s",
            flush=True,
        )
        print(f"machines: {' '.join(chassis_ids)}", flush=True)

    with (
        contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError),  # Ctrl-C, SIGTERM
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        runner.run(simulate(devices, args.period, args.seed, announce, templates=args.templates))
    return 0


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when it is installed (its socket writes and reads are C: the
    simulator's CPU per message was half asyncio's transport code), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def read_secrets(
    path: Path, *, name: str | None = None, missing_ok: bool = False
) -> dict[str, str]:
    """The JSON object ``{chassis: secret}`` in ``path``; :class:`ConfigError` if it is not one.

    ``name`` is what errors call the file (default ``--secrets PATH``); with ``missing_ok``
    a file that does not exist is ``{}`` (``livedata devices secret --out`` merges into it).
    """
    name = f"--secrets {path}" if name is None else name
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if missing_ok and isinstance(exc, FileNotFoundError):
            return {}
        raise ConfigError(f"cannot read {name}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"{name} is not a JSON object of chassis → secret")
    return data


def device_urls(
    url: str, org: str, chassis_ids: list[str], secrets: dict[str, str]
) -> dict[str, str]:
    """Each machine's broker URL with its own credentials (username ``{org}/{chassis}``)."""
    missing = [c for c in chassis_ids if c not in secrets]
    if missing:
        raise ConfigError(
            f"--secrets has no secret for {len(missing)} machine(s), e.g. {missing[0]}: "
            f"livedata devices secret {org} --all --out FILE"
        )
    try:
        return {c: device_url(url, org, c, secrets[c]) for c in chassis_ids}
    except ValueError as exc:
        raise ConfigError(f"--mqtt: {exc}; with --secrets give mqtt://host:port") from None


class _Ticker:
    """Sends every machine's second on each wall-clock period boundary, from the ring."""

    def __init__(self, devices: list[SimDevice], ring: PayloadRing, period: float) -> None:
        self.devices = devices
        self.ring = ring
        self.period = period
        self.realtime = dict.fromkeys((d.chassis for d in devices), True)
        self.ticks = 0
        self.skipped = 0

    async def handle_method(self, chassis: str, method: str, payload: Any) -> MethodResult:
        """``startMs`` / ``endMs`` / ``getStatus`` of one machine."""
        return answer_realtime(
            method,
            lambda: self.realtime[chassis],
            lambda on: self.realtime.__setitem__(chassis, on),
        )

    async def tick(self, ts: int) -> None:
        """One second of every machine whose real-time flag is on, stamped ``ts``."""
        ring, realtime = self.ring, self.realtime
        for device in self.devices:
            if device.full:
                await device.room()
            if realtime[device.chassis]:
                can, raw = ring.payloads(device.chassis, ts)
                can_topic, raw_topic = device.topics
                device.publish([(can_topic, can), (raw_topic, raw)])
        ring.advance()
        self.ticks += 1

    async def run(self) -> None:
        """Tick on each period boundary until cancelled; missed ticks are skipped, not sent late."""
        period = self.period
        last = -1
        while True:
            now = time.time()
            k = max(math.floor(now / period) + 1, last + 1)
            if last >= 0 and k > last + 1:
                self.skipped += k - last - 1
            await asyncio.sleep(max(0.0, k * period - now))
            last = k
            await self.tick(round(k * period * 1000))


async def simulate(
    devices: list[SimDevice],
    period: float,
    seed: int,
    announce: Callable[[], None],
    *,
    templates: int = TEMPLATES,
) -> None:
    """Connect every device, tick the fleet through them until cancelled, then close them."""
    cancel_on_signals()  # SIGINT / SIGTERM: close every device; a second one cuts that short
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(device: SimDevice) -> None:
        async with gate:
            await device.connect()

    report: asyncio.Task[None] | None = None
    counts = _Counts(devices)
    try:
        results = await asyncio.gather(*map(connect, devices), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        from livedata.decode.can import CanDecoder  # imported by run(), not at module level

        decoder = CanDecoder.from_dbc(DBC_PATH.read_text())
        ring = PayloadRing([d.chassis for d in devices], decoder, seed, templates=templates)
        ticker = _Ticker(devices, ring, period)
        for device in devices:  # startMs / endMs / getStatus switch the machine's stream

            async def on_method(method: str, payload: Any, chassis: str = device.chassis) -> Any:
                return await ticker.handle_method(chassis, method, payload)

            device.on_method = on_method
        report = asyncio.create_task(_report(counts, ticker))
        announce()
        await ticker.run()
    finally:
        if report is not None:
            report.cancel()
            await asyncio.gather(report, return_exceptions=True)
        await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
        if report is not None:  # the last period, and what still waited at exit: dropped
            counts.log(counts.skipped)


class _Counts:
    """The devices' counters since the last :meth:`log`."""

    def __init__(self, devices: list[SimDevice]) -> None:
        self.devices = devices
        self.sent = self.dropped = self.refused = self.skipped = 0

    def log(self, skipped: int) -> None:
        """Log one line of what changed: a warning if anything was dropped, refused or
        skipped (``skipped``: the ticker's total)."""
        devices = self.devices
        sent = sum(d.sent for d in devices)
        dropped = sum(d.dropped for d in devices)
        refused = sum(d.refused for d in devices)
        worse = dropped > self.dropped or refused > self.refused or skipped > self.skipped
        log.log(
            logging.WARNING if worse else logging.INFO,
            "sent %d messages, dropped %d beyond the spool (never acknowledged), %d waiting"
            "; %d/%d machines connected; %d refused by the broker, %d ticks late and skipped",
            sent - self.sent,
            dropped - self.dropped,
            sum(d.spooled for d in devices),
            sum(d.connected for d in devices),
            len(devices),
            refused - self.refused,
            skipped - self.skipped,
        )
        self.sent, self.dropped, self.refused, self.skipped = sent, dropped, refused, skipped


async def _report(counts: _Counts, ticker: _Ticker) -> None:
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        counts.log(ticker.skipped)
