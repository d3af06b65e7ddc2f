"""``livedata`` with timestamps along the live path, for ``bench_live.py``.

    python bench/_hops.py OUT demo --machines 100 …    # any livedata CLI arguments

Runs the livedata CLI (``livedata.cli.main``, from whatever ``livedata`` is on the
path: the bench points ``PYTHONPATH`` at the tree it measures) after wrapping the
functions a real-time ``vehicle_can`` record passes on its way to the browser.  At
each point it notes the record's sample time (``ts``, ms) and how long after it the
record got there:

==========  =======================================================================
``sent``    the simulated machine hands its message to the device link
            (``LocalDeviceLink.send``): the fleet's tick time until then
``ingest``  ingest takes it from the link (``Ingest.handle_many``)
``decoded`` decoded, queued for the store and for the log (``Ingest._enqueue``)
``logged``  the memory log has it (``MemoryLog.append`` returned)
``publish`` distribute publishes it (``MemoryPubSub.publish_many``)
``written`` the fan-out wrote it to every watching socket (``Fanout._on_message``
            returned)
==========  =======================================================================

In the distributed shape (``bench_cluster.py --hops``, each role process run through
this script) the log and pub/sub are Kafka and Redis, so the points are:
``read`` (the MQTT link's read callback decoded it and put it in the link's inbox),
``ingest`` and ``decoded`` as above, ``append`` and ``logged`` (``KafkaLog.append``
called and returned), ``consumed`` (distribute got it from the log: ``Distribute.messages``),
``published`` (``Distribute._publish`` returned: Redis took it; in the embedded shape
too) and ``written`` (the
gateway's fan-out; the ``ts`` read from the message's JSON).  With
``LIVEDATA_HOPS_CHASSIS`` set (comma-separated chassis ids: the bench's client
machines) only those machines' records are noted, so a 5,000-machine fleet's
probe costs little.

The client's receipt is the bench's own last point.  Garbage collections of 1 ms or
more are noted too (wall time: what a message waiting behind one waits), and so are
the event loop's stalls: a watchdog thread hands the loop a callback every 10 ms
and, while it waits for it to run, samples the loop thread's stack every 10 ms; a
wait of ``STALL_S`` or more is noted with its most sampled stacks (a stall whose
stacks are all different is the process waiting for a CPU, not code holding the
loop).  At exit (the bench stops the server with SIGINT) everything goes to ``OUT``
as JSON: ``{"hops": {name: [ts, lag, ts, lag, …]}, "gc": [[end, generation,
seconds], …], "stalls": [[end, seconds, [[stack, samples], …]], …], "inflight": [time,
count, …], "window": n, "awaits": {name: [end, seconds, …]}}``; ``inflight`` is, after each read of the MQTT link, how many
of its messages wait for their acknowledgement: at the link's ``window`` (its
``inflight`` option) the broker holds the next ones back until PUBACKs come;
``awaits`` times each call of what ingest awaits before it queues a batch (:data:`AWAITED`).
A point whose function does not exist in the measured tree is left out (listed under
``"missing"``), so an older tree is measured with what it has.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import gc
import importlib
import itertools
import os
import sys
import threading
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

STALL_S = 0.05
HOPS = (
    "sent",
    "read",
    "ingest",
    "decoded",
    "append",
    "logged",
    "consumed",
    "publish",
    "published",
    "written",
)
CHANNEL_SUFFIX = "/vehicle_can"
AWAITED = (
    "livedata.pipeline.dtcs:DtcService.observe_many",
    "livedata.catalog:Catalog.save_fields",
    "livedata.catalog:Catalog.claim_fields",
)
"""What :meth:`Ingest.handle_many` may await before it queues a batch's records (the
live path waits for it): each call is timed."""


class Probe:
    """The notes of one server process."""

    def __init__(self) -> None:
        self.hops = {hop: array("d") for hop in HOPS}
        self.gc: list[tuple[float, int, float]] = []
        self.missing: list[str] = []
        self.stalls: list[tuple[float, float, list[tuple[str, int]]]] = []
        self.inflight = array("d")
        """After each MQTT read: ``time.time()`` and the link's messages not yet acknowledged."""
        self.window = 0
        self.awaits: dict[str, array] = {}
        """Per function awaited in ingest's message path (:data:`AWAITED`): ``time.time()``
        at its end and its wall seconds, for each call."""
        """The MQTT link's ``inflight`` (the broker sends no more unacknowledged)."""
        self._gc_started = 0.0

    def note(self, hop: str, ts: int) -> None:
        self.hops[hop].extend((ts, time.time() * 1000.0 - ts))

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        elif now - self._gc_started >= 0.001:
            self.gc.append((time.time(), info["generation"], now - self._gc_started))

    def dump(self, path: str) -> None:
        data = {
            "hops": {hop: list(values) for hop, values in self.hops.items()},
            "gc": self.gc,
            "stalls": self.stalls,
            "missing": self.missing,
            "inflight": list(self.inflight),
            "window": self.window,
            "awaits": {name: list(values) for name, values in self.awaits.items()},
        }
        with open(path, "wb") as out:
            out.write(orjson.dumps(data))

    def watch(self, loop: Any) -> None:
        """Start the watchdog thread of ``loop`` (see the module doc)."""
        loop_thread = threading.get_ident()

        def watchdog() -> None:
            while not loop.is_closed():
                ran = threading.Event()
                started = time.perf_counter()
                try:
                    loop.call_soon_threadsafe(ran.set)
                except RuntimeError:  # the loop closed
                    return
                stacks: Counter[str] = Counter()
                while not ran.wait(0.01):
                    if not SAMPLE_STACKS:
                        continue
                    frame = sys._current_frames().get(loop_thread)
                    if frame is not None:
                        inner = traceback.extract_stack(frame)[-4:]
                        stacks[
                            " < ".join(
                                f"{f.name} ({f.filename.rsplit('/', 2)[-1]}:{f.lineno})"
                                for f in reversed(inner)
                            )
                        ] += 1
                waited = time.perf_counter() - started
                if waited >= STALL_S:
                    self.stalls.append((time.time(), waited, stacks.most_common(3)))
                time.sleep(0.01)

        threading.Thread(target=watchdog, name="hops-watchdog", daemon=True).start()

    def wrap(self, where: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Replace ``module:Class.method`` (or ``module:function``) by ``wrapper(it)``; note
        it when absent."""
        module_name, _, qualname = where.partition(":")
        owner_name, _, method_name = qualname.rpartition(".")
        try:
            owner = importlib.import_module(module_name)
            if owner_name:
                owner = getattr(owner, owner_name)
            original = getattr(owner, method_name)
        except (ImportError, AttributeError):
            self.missing.append(where)
            return
        setattr(owner, method_name, functools.wraps(original)(wrapper(original)))


SAMPLED: frozenset[str] | None = (
    frozenset(filter(None, os.environ["LIVEDATA_HOPS_CHASSIS"].split(",")))
    if os.environ.get("LIVEDATA_HOPS_CHASSIS")
    else None
)
"""Only these machines' records are noted (``None``: every machine's)."""
SAMPLE_STACKS = os.environ.get("LIVEDATA_HOPS_STACKS", "1") != "0"
"""Sample the loop thread's stack during a stall (``LIVEDATA_HOPS_STACKS=0``: only time
the stall).  Reading a running thread's frames from the watchdog crashed (SIGSEGV in
libpython 3.11) a role of ``bench_cluster.py --hops`` twice in five runs."""


def realtime_can(message: Any) -> bool:
    return (
        message.kind == "realTime"
        and message.msg_type == "vehicle_can"
        and (SAMPLED is None or message.chassis in SAMPLED)
    )


def install(probe: Probe) -> None:
    """Wrap the live path's functions (see the module doc)."""
    note = probe.note

    def on_send(send: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(self: Any, message: Any) -> None:
            if realtime_can(message):
                note("sent", message.ts)
            await send(self, message)

        return wrapped

    def on_handle_many(handle: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(self: Any, deliveries: Any) -> Any:
            for delivery in deliveries:
                message = getattr(delivery, "message", None)
                if message is not None and realtime_can(message):
                    note("ingest", message.ts)
            return await handle(self, deliveries)

        return wrapped

    def on_enqueue(enqueue: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(self: Any, items: Any) -> Any:
            for record, _ack in items:
                if realtime_can(record):
                    note("decoded", record.ts)
            return await enqueue(self, items)

        return wrapped

    def on_append(append: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(self: Any, records: Any) -> None:
            await append(self, records)
            for record in records:
                if realtime_can(record):
                    note("logged", record.ts)

        return wrapped

    def on_publish(publish: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(self: Any, messages: Any) -> None:
            for channel, message in messages:
                if channel.endswith(CHANNEL_SUFFIX) and hasattr(message, "head"):
                    note("publish", message.head["ts"])
            await publish(self, messages)

        return wrapped

    def on_messages(messages: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(self: Any, batch: Any) -> Any:
            sampled = [record.ts for record in batch if realtime_can(record)]
            for ts in sampled:
                note("consumed", ts)
            self._hops_sampled = sampled  # noted as published once _publish returns
            return messages(self, batch)

        return wrapped

    def on_distribute_publish(publish: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(self: Any, messages: Any) -> None:
            sampled, self._hops_sampled = getattr(self, "_hops_sampled", []), []
            await publish(self, messages)
            for ts in sampled:
                note("published", ts)

        return wrapped

    def on_message(deliver: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(self: Any, channel: str, data: Any) -> None:
            deliver(self, channel, data)
            if channel.endswith(CHANNEL_SUFFIX):
                if hasattr(data, "head"):
                    note("written", data.head["ts"])
                elif isinstance(data, bytes | bytearray | memoryview):
                    note("written", orjson.loads(data)["ts"])

        return wrapped

    def on_receive_many(receive: Callable[..., Any]) -> Callable[..., None]:
        def wrapped(self: Any, client: Any, packets: Any) -> None:
            before = len(self._inbox)
            receive(self, client, packets)
            probe.inflight.extend((time.time(), len(self._order)))
            probe.window = self.window
            for item in itertools.islice(self._inbox, before, None):
                message = getattr(item, "message", None)
                if message is not None and realtime_can(message):
                    note("read", message.ts)

        return wrapped

    probe.wrap("livedata.devices.local:LocalDeviceLink.send", on_send)
    probe.wrap("livedata.devices.mqtt:MqttDeviceLink._receive_many", on_receive_many)
    probe.wrap("livedata.pipeline.ingest:Ingest.handle_many", on_handle_many)
    probe.wrap("livedata.pipeline.ingest:Ingest._enqueue", on_enqueue)
    probe.wrap("livedata.bus.memory:MemoryLog.append", on_append)
    probe.wrap("livedata.bus.memory:MemoryPubSub.publish_many", on_publish)

    def on_kafka_append(append: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(self: Any, records: Any) -> None:
            sampled = [record.ts for record in records if realtime_can(record)]
            for ts in sampled:
                note("append", ts)
            await append(self, records)
            for ts in sampled:
                note("logged", ts)

        return wrapped

    probe.wrap("livedata.bus.kafka:KafkaLog.append", on_kafka_append)

    def timed(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    probe.awaits.setdefault(name, array("d")).extend(
                        (time.time(), time.perf_counter() - started)
                    )

            return wrapped

        return wrap

    for where in AWAITED:
        probe.wrap(where, timed(where.rpartition(":")[2]))
    probe.wrap("livedata.pipeline.distribute:Distribute.messages", on_messages)
    probe.wrap("livedata.pipeline.distribute:Distribute._publish", on_distribute_publish)
    probe.wrap("livedata.gateway.fanout:Fanout._on_message", on_message)

    def on_tune_gc(tune_gc: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: Any) -> None:  # called once on the running loop, once started
            tune_gc(*args)
            probe.watch(asyncio.get_running_loop())

        return wrapped

    probe.wrap("livedata.cli.common:tune_gc", on_tune_gc)
    gc.callbacks.append(probe.on_gc)


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    probe = Probe()
    install(probe)
    atexit.register(probe.dump, out)
    from livedata.cli.main import main as livedata_main

    sys.exit(livedata_main(argv))


if __name__ == "__main__":
    main()
