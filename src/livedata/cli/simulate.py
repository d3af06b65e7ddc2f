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
``startMs`` / ``endMs`` (its real-time stream on / off) and ``getStatus``.  Ctrl-C or SIGTERM publishes ``offline`` and
disconnects cleanly; a kill leaves it to the Last Will.

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

Under stress: each machine has its own send queue (100 messages) and sender task, so
a slow connection holds up only its machine, and the fleet waits when a queue is
full.  While a machine is disconnected (it reconnects by itself with backoff) its
messages are dropped and counted — a real agent spools them instead — and the
counts are logged every 10 s.  If a machine cannot connect at start, the command
fails with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livedata.auth.mosquitto import device_url
from livedata.decode.can import CanDecoder
from livedata.errors import BackendError, ConfigError
from livedata.model import DeviceMessage, valid_id
from livedata.observe import setup_logging
from livedata.sim.demo import DBC_PATH, ORG
from livedata.sim.fleet import Fleet, default_chassis_ids

if TYPE_CHECKING:
    from livedata.devices.mqtt import MqttDevice

log = logging.getLogger("livedata.simulate")

QUEUE_PER_MACHINE = 100
CONNECT_CONCURRENCY = 50
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
    try:
        from livedata.devices.mqtt import MqttDevice
    except ImportError as exc:
        raise ConfigError(f"MQTT needs a driver: pip install 'livedata[mqtt]' ({exc})") from exc
    setup_logging(args.log_level)
    # one line per machine per reconnect attempt is noise: the report below sums it up
    logging.getLogger("livedata.devices.mqtt").setLevel(logging.WARNING)
    chassis_ids = default_chassis_ids(args.machines)
    urls = {c: args.mqtt for c in chassis_ids}
    if args.secrets is not None:
        urls = device_urls(args.mqtt, args.org, chassis_ids, read_secrets(args.secrets))
    devices = [MqttDevice(urls[c], args.org, c) for c in chassis_ids]

    def announce() -> None:
        print(
            f"livedata simulate: {len(devices)} machines of organisation {args.org} "
            f"publishing to {args.mqtt.rpartition('@')[2]} every {args.period:g} s",
            flush=True,
        )
        print(f"machines: {' '.join(chassis_ids)}", flush=True)

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM
        asyncio.run(simulate(devices, args.org, args.period, args.seed, announce))
    return 0


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


class _Sender:
    """One machine's queue and the task that publishes it in order."""

    def __init__(self, device: MqttDevice) -> None:
        self.device = device
        self.queue: asyncio.Queue[DeviceMessage] = asyncio.Queue(QUEUE_PER_MACHINE)
        self.sent = 0
        self.dropped = 0

    async def run(self) -> None:
        while True:
            message = await self.queue.get()
            try:
                await self.device.send(message)
                self.sent += 1
            except BackendError:
                self.dropped += 1
            except ValueError as exc:  # a message the encoding cannot carry
                self.dropped += 1
                log.warning("%s: %s", self.device.client_id, exc)


async def simulate(
    devices: list[MqttDevice], org: str, period: float, seed: int, announce: Callable[[], None]
) -> None:
    """Connect every device, run the fleet through them until cancelled, then close them."""
    from livedata.devices.mqtt import cancel_and_wait  # aiomqtt only when simulating

    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, main.cancel)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(device: MqttDevice) -> None:
        async with gate:
            await device.connect()

    async def close(device: MqttDevice) -> None:
        async with gate:
            await device.close()

    tasks: list[asyncio.Task[None]] = []
    try:
        results = await asyncio.gather(*map(connect, devices), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        senders = {d.chassis: _Sender(d) for d in devices}
        tasks = [asyncio.create_task(s.run()) for s in senders.values()]
        tasks.append(asyncio.create_task(_report(list(senders.values()))))

        async def send(message: DeviceMessage) -> None:
            await senders[message.chassis].queue.put(message)

        decoder = CanDecoder.from_dbc(DBC_PATH.read_text())
        fleet = Fleet(org, list(senders), decoder, send, period=period, seed=seed)
        for device in devices:  # startMs / endMs / getStatus switch the machine's stream

            async def on_method(method: str, payload: Any, chassis: str = device.chassis) -> Any:
                return await fleet.handle_method(chassis, method, payload)

            device.on_method = on_method
        announce()
        await fleet.run()
    finally:
        await asyncio.gather(*map(cancel_and_wait, tasks))
        await asyncio.gather(*map(close, devices), return_exceptions=True)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


async def _report(senders: list[_Sender]) -> None:
    sent = dropped = 0
    while True:
        await asyncio.sleep(REPORT_EVERY_S)
        now_sent = sum(s.sent for s in senders)
        now_dropped = sum(s.dropped for s in senders)
        connected = sum(s.device.connected for s in senders)
        level = logging.WARNING if now_dropped > dropped else logging.INFO
        log.log(
            level,
            "sent %d messages, dropped %d while disconnected; %d/%d machines connected",
            now_sent - sent,
            now_dropped - dropped,
            connected,
            len(senders),
        )
        sent, dropped = now_sent, now_dropped
