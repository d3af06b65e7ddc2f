"""Flags shared by the server subcommands, and running the gateway on uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import socket
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from livedata.cli.signals import cancel_on_signals
from livedata.errors import ConfigError
from livedata.gateway.app import create_app
from livedata.gateway.server import (
    ACCEPT_BATCH,
    LimitedServer,
    event_loop_factory,
    uvicorn_config,
)
from livedata.gateway.sio import with_socketio
from livedata.observe import setup_logging, time_gc
from livedata.runtime import Runtime
from livedata.settings import ROLES, Settings, load_settings


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (also LIVEDATA_CONFIG)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000; 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, help="directory of the embedded databases")
    parser.add_argument("--store", help="telemetry store URL: sqlite:///path, memory://")
    parser.add_argument("--metadata", help="metadata database URL: sqlite:///path")
    parser.add_argument("--log", help="log URL between ingest and distribute: memory://")
    parser.add_argument("--pubsub", help="pub/sub URL for live fan-out: memory://")
    parser.add_argument("--devices", help="device link URL: local://, mqtt://host:port")
    parser.add_argument(
        "--role",
        dest="roles",
        help=f"roles to run, comma-separated: {','.join(ROLES)} (default all); several "
        "processes of ingest split the devices by the --devices URL (MQTT share group, or "
        "partition=i/n), of distribute and alerts the log's partitions",
    )
    parser.add_argument(
        "--connect-timeout", type=float, help="seconds to wait for each engine at start (30)"
    )
    parser.add_argument("--retention-days", type=float, help="keep telemetry this long (default 7)")
    parser.add_argument("--log-level", help="debug, info, warning, error (default info)")


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    keys = (
        "devices",
        "roles",
        "connect_timeout",
        "host",
        "port",
        "data_dir",
        "store",
        "metadata",
        "log",
        "pubsub",
        "retention_days",
        "log_level",
    )
    overrides = {k: getattr(args, k) for k in keys}
    overrides.update(extra)
    return load_settings(overrides, args.config)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(ACCEPT_BATCH)
    sock.setblocking(False)
    return sock


GC_THRESHOLDS = (10_000, 3, 60)
"""``gc.set_threshold`` of server processes: a young collection per 10,000 net allocations,
a middle one per 3 young ones, a full one considered per 60 middle ones.

Python's default (700, 10, 10) made the gateway role run a full collection every
second or two under live load; each walks every object made since start-up, about
250 per open connection (0.3-0.4 s of CPU at 3,000 connections, ``bench/bench_fanout.py``).
Steady fan-out makes almost no garbage that lives long enough to be collected (no
collection of 1 ms or more at 10,000 deliveries/s).  A flood of connects does: each
live connection keeps about 60 objects, so the middle generation fills fast.  With
(20,000, 10, 10) a middle collection walked up to 200,000 of them: 80-107 ms with the
event loop stopped while 10,000 live WebSocket clients connected
(``bench/bench_idle.py --clients 10000``).  With these, a young collection walks at most
10,000 objects (about 6 ms under that flood) and a middle one at most about 30,000
(22 ms), while full collections stay as rare as before (one considered per 1.8 million
net allocations, and run only when a quarter more objects than after the last one
have reached the old generation, Python's own rule)."""


INGEST_GC_THRESHOLDS = (100_000, 3, 60)
"""``gc.set_threshold`` of a process without the gateway role (ingest, distribute, alerts):
a young collection per 100,000 net allocations.

Generation 0's count is allocations *net* of deallocations, so what fills it is what
outlives a moment: ingest holds every record of a store batch (ClickHouse's: a second of
the process's share of the fleet, with its queue entry, acknowledgement and raw-frame
blob) until the write, then frees it all at once.  With :data:`GC_THRESHOLDS` that
batch filled generation 0 several times a second, so young and middle collections walked
the same live records again and again: 5.5-13 µs of CPU per record at 5,000 machines (10-17 %
of the role's CPU, ``livedata_gc_seconds_total``).  A batch's worth of records now stays
below the threshold and is freed by reference counting before a collection sees it:
0.8 µs per record, ingest 76 -> 66 µs per record (``bench/bench_cluster.py --machines 5000
--ingest 2``).  The price is a rare but longer pause: about one collection per 10 s per
process, 74 ms of CPU on average; ingest has no connect floods (the gateway's reason for
the lower bound).

Distribute and alerts (no gateway either) hold a log batch (up to 1,000 records, their
values still JSON, and distribute's messages) from the fetch until the next one; with
:data:`GC_THRESHOLDS` that and the consumer's buffers filled generation 0 every 8,000
records or so: 0.28-0.32 µs of GC CPU per record in distribute and 0.14-0.18 in alerts,
collections of up to 5-7 ms wall; with these, none in 100,000 records
(``bench/bench_distribute.py --log kafka [--role alerts] --flood 100000``)."""


def tune_gc(roles: Collection[str] = ()) -> None:
    """Keep what start-up built out of every later collection, and collect less often
    (:data:`INGEST_GC_THRESHOLDS` when ``roles`` are pipeline roles only, no gateway; else
    :data:`GC_THRESHOLDS`, also with no ``roles`` given).

    Modules, the app and its routes, settings, metadata caches: what exists once the
    runtime has started lives as long as the process, and a full (generation 2)
    collection walked all of it with the event loop stopped (about 280,000 objects
    on the gateway role; 0.4-1.4 s under live load on a busy machine).
    ``gc.freeze()`` moves everything alive now into the permanent generation, so
    collections walk only what was made since; :data:`GC_THRESHOLDS` makes them rarer.
    Their time is counted from then on (:func:`livedata.observe.time_gc`, on ``/metrics``).
    """
    time_gc()
    gc.collect()
    gc.freeze()
    pipeline_only = bool(roles) and "gateway" not in roles
    gc.set_threshold(*(INGEST_GC_THRESHOLDS if pipeline_only else GC_THRESHOLDS))


def serve(settings: Settings, rt: Runtime, announce: Callable[[str], None]) -> int:
    """Run the gateway app for ``rt`` until interrupted; ``announce(url)`` once listening."""
    setup_logging(settings.log_level)
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    app = create_app(rt)
    config = uvicorn_config(with_socketio(app), settings, sockets=app.state.live)
    host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") else settings.host
    # told once uvicorn listens and handles signals (an interrupt right after is graceful)
    server = LimitedServer(config, on_listening=lambda: announce(f"http://{host}:{port}"))

    async def run() -> None:
        try:
            await rt.start()
        except BaseException:
            await rt.stop()
            raise
        tune_gc(rt.roles)
        try:
            await server.serve(sockets=[sock])
        finally:
            cancel_on_signals()  # a signal while the runtime stops cuts the stop short
            await rt.stop()

    factory = event_loop_factory(settings.event_loop)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run())
    return 0
