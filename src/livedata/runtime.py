"""Wires the roles of one process together and runs them.

The embedded default runs every role here on the memory bus, SQLite and the
in-process device link; the same objects run on other engines when the
settings name other URLs.  Each background task is supervised: if one crashes
it is logged and restarted after a second, so one bad moment never leaves a
role silently dead.

The runtime knows nothing of the gateway (it does not import
:mod:`livedata.gateway`): :func:`livedata.gateway.app.create_app` builds the
:class:`~livedata.gateway.gateway.Gateway` from this runtime's parts and adds
its start to ``on_started``; the gateway hands its background tasks to
:meth:`Runtime.spawn`, so they run under the same supervision and show in
:meth:`Runtime.health`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from livedata import observe
from livedata.backends import redact
from livedata.bus import open_log, open_pubsub
from livedata.catalog import Catalog
from livedata.devices import open_devices
from livedata.devices.http import HttpDeviceLink
from livedata.errors import BackendError
from livedata.metadata import Metadata
from livedata.metadata.decoding import delete_ranges_before
from livedata.pipeline.alerts import alert_role
from livedata.pipeline.distribute import Distribute
from livedata.pipeline.ingest import Ingest, consume_devices
from livedata.pipeline.limits import TimestampPolicy
from livedata.pipeline.redecode import Redecoder
from livedata.pipeline.spill import LOG, SpillJournal, spill_dir_of
from livedata.retry import backoff
from livedata.settings import Settings
from livedata.store import open_store

if TYPE_CHECKING:
    from livedata.sim.fleet import Fleet

log = logging.getLogger("livedata.runtime")

RETENTION_EVERY_S = 600.0


class Runtime:
    """All roles of one process: ingest, distribute, alerts, the tasks of an attached gateway,
    and optionally the demo fleet."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.roles = frozenset(settings.roles)
        self.meta = Metadata(settings.metadata)
        self.store = open_store(settings.store)
        self.log = open_log(settings.log)
        self.pubsub = open_pubsub(settings.pubsub)
        self.pubsub.history_seconds = settings.live_history_seconds
        self.devices = open_devices(settings.devices)
        self.http_devices = HttpDeviceLink()
        """Where HTTP ingest's requests reach ingest (:mod:`livedata.gateway.ingest_http`)."""
        self.catalog = Catalog(self.meta, max_fields=settings.max_fields_per_type)
        self.redecoder = Redecoder(self.store, self.catalog)
        """Re-decoding jobs started through the API (they run in this process)."""
        spill_dir = spill_dir_of(
            settings.spill_dir, settings.data_dir, getattr(self.devices, "client_id", None)
        )
        if "ingest" not in self.roles:
            spill_dir = None
        self.ingest = Ingest(
            self.store,
            self.log,
            self.catalog,
            batch_max=settings.store_batch_max,
            linger=None if settings.store_batch_ms is None else settings.store_batch_ms / 1000,
            queue_max=settings.ingest_queue,
            spill=SpillJournal(spill_dir, settings.spill_max_bytes) if spill_dir else None,
            spill_after=settings.spill_after,
            log_journal=(
                SpillJournal(spill_dir, settings.log_journal_max_bytes, LOG) if spill_dir else None
            ),
            timestamps=TimestampPolicy(settings.future_skew_seconds, settings.future_timestamps),
        )
        self.distribute = Distribute(self.log, self.pubsub)
        self.alerts = alert_role(self)
        self.fleet: Fleet | None = None
        """The simulated fleet, when this process runs one (the demo)."""
        self.on_started: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()

    def _parts(self) -> list[tuple[str, Any]]:
        """The engines this process's roles use, in start order."""
        wanted: list[tuple[str, Any]] = [("metadata", self.meta)]
        if self.roles & {"ingest", "gateway", "alerts"}:
            wanted.append(("store", self.store))
        if self.roles & {"ingest", "distribute", "alerts"}:
            wanted.append(("log", self.log))
        if self.roles & {"distribute", "gateway", "alerts"}:
            wanted.append(("pubsub", self.pubsub))
        if self.roles & {"ingest", "gateway"}:  # the gateway sends direct methods
            wanted.append(("devices", self.devices))
        return wanted

    async def start(self) -> None:
        """Connect to every engine the roles need (each within ``connect_timeout``), then run."""
        with observe.log_context(role="runtime"):
            self.devices.receive_telemetry = "ingest" in self.roles
            for name, part in self._parts():
                await self._connect(name, part)
            if "ingest" in self.roles:
                await self.ingest.start()  # the spill journal: an unusable one fails the start
                self.spawn("ingest-writer", self.ingest.run)
                self.spawn("ingest-devices", lambda: consume_devices(self.ingest, self.devices))
                self.spawn("ingest-http", lambda: consume_devices(self.ingest, self.http_devices))
                self.spawn("retention", self._retention)
            if "distribute" in self.roles:
                self.spawn("distribute", self.distribute.run)
            if "alerts" in self.roles:
                self.spawn("alerts", self.alerts.run)
            log.info("running roles: %s", ", ".join(sorted(self.roles)))
            for hook in self.on_started:
                await hook()
            self.started.set()

    async def _connect(self, name: str, part: Any) -> None:
        deadline = time.monotonic() + self.settings.connect_timeout
        delays = backoff(0.5, 5.0)
        while True:
            try:
                await part.start()
                log.info("connected to %s %s", name, redact(part.url))
                return
            except Exception as exc:
                delay = next(delays)
                if time.monotonic() + delay > deadline:
                    raise BackendError(
                        f"cannot reach {name} at {redact(part.url)} after "
                        f"{self.settings.connect_timeout:g} s: {exc}"
                    ) from exc
                log.warning("%s at %s not reachable (%s); retrying", name, redact(part.url), exc)
                await asyncio.sleep(delay)

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` as a supervised background task."""

        async def supervise() -> None:
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("task %s failed; restarting in 1 s", name)
                    await asyncio.sleep(1.0)

        self._tasks.append(asyncio.create_task(supervise(), name=name))

    async def stop(self) -> None:
        """Cancel the roles' tasks (again each second: a cancellation can be swallowed by
        ``asyncio.wait_for`` on Python 3.11), then close the engines."""
        pending = set(self._tasks)
        for _ in range(10):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        if pending:
            log.error("tasks did not stop: %s", ", ".join(t.get_name() for t in pending))
        self._tasks.clear()
        await self.redecoder.close()
        try:
            await self.ingest.close()
        except Exception:
            log.exception("closing the spill and log journals failed")
        for name, part in reversed(self._parts()):
            try:
                await part.close()
            except Exception:
                log.exception("closing %s at %s failed", name, redact(part.url))

    async def _retention(self) -> None:
        with observe.log_context(role="retention"):
            while True:
                await self.retention_pass()
                await asyncio.sleep(RETENTION_EVERY_S)

    async def retention_pass(self, now: float | None = None) -> tuple[int, int]:
        """Delete values older than ``retention_days`` (and the decode ranges that end before
        them) and raw frames older than ``frames_retention_days``; (values, blobs) deleted."""
        now = time.time() if now is None else now
        cutoff = int((now - self.settings.retention_days * 86_400) * 1000)
        points = await self.store.delete_before(cutoff)
        if points:
            log.info("retention deleted %d points older than %d", points, cutoff)
        await delete_ranges_before(self.meta, cutoff)
        cutoff = int((now - self.settings.frames_retention_days * 86_400) * 1000)
        blobs = await self.store.delete_frames_before(cutoff)
        if blobs:
            log.info("retention deleted %d raw frame blobs older than %d", blobs, cutoff)
        return points, blobs

    def update_gauges(self) -> None:
        self.ingest.update_gauges()

    async def health(self) -> dict[str, Any]:
        ok = self.started.is_set() and all(not t.done() for t in self._tasks)
        return {
            "ok": ok,
            "tasks": {t.get_name(): not t.done() for t in self._tasks},
            "ingestQueue": self.ingest.depth(),
            "ingestUnlogged": self.ingest.unlogged,
            "spill": self.ingest.spill.stats() if self.ingest.spill is not None else None,
            "logJournal": (
                self.ingest.log_journal.stats() if self.ingest.log_journal is not None else None
            ),
        }
