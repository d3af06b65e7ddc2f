"""The fleet state of one gateway process: every machine's presence and latest values.

One :class:`Fleet` is built by :class:`~livedata.gateway.gateway.Gateway` and passed to
what needs it: the fleet summary (``GET …/fleet``) and Socket.IO (``dashboard:data``,
``dashboard:update``, status ``device-update``).  Before, each of them kept its own copy,
each listening to every channel of every machine and reading the store for it.

Per organisation, an :class:`OrgFleet` knows the machines (re-read from the metadata
database every :data:`MACHINES_REFRESH_S`), listens once to each machine's live channels
(in-process listeners of the fan-out core, ``Gateway.hub``) and keeps per machine: ``last_seen`` (newest record
time, ms), ``arrived`` (when real-time data last arrived, monotonic), the latest value
of each field per message type and the latest GPS position.  A machine it meets is
seeded once from the store (its newest values), so a page opens filled.  A machine is
``online`` while real-time data arrived in the last :data:`OFFLINE_AFTER_S` seconds.

Observers (Socket.IO's feed of the organisation) are called from the listener with
``(machine, msg_type, values, head)`` after the machine was updated; they must not block.

Lifetime: an organisation's state is made by the first :meth:`Fleet.acquire` and
dropped (listeners removed) when the last user released it; :meth:`Fleet.keep` holds
it for the process's life (the fleet page's summary is read often and cheaply).

Under stress: memory is one entry per machine and field of the organisations in use;
the listener only updates fields in place (no allocation beyond the value dicts it
is handed) and calls the observers; the store is read once per 500 machines met (their
newest timestamps) and once per message type and 500 machines met with data of it
(their latest values), so a gateway starting with 5,000 machines reads it about 30
times instead of about 10,000 (``bench/bench_seed.py``), and the metadata database
once per organisation every 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livedata.model import MsgType, live_channel

if TYPE_CHECKING:
    from livedata.catalog import Catalog
    from livedata.gateway.fanout import Fanout
    from livedata.metadata import Metadata
    from livedata.store.base import Store

log = logging.getLogger("livedata.gateway.fleet")

OFFLINE_AFTER_S = 5.0
MACHINES_REFRESH_S = 30.0
SEED_WINDOW_MS = 2_000
GPS_LAT, GPS_LNG = "gps_lat", "gps_lng"

Observer = Callable[["FleetMachine", str, dict[str, Any], dict[str, Any]], None]
"""Called with (machine, msg_type, values, head) for each reading, after the update;
``head`` is the channel message's ``ts``, ``seq`` and ``epoch`` (shared, read only)."""


@dataclass(slots=True)
class FleetMachine:
    """What the gateway knows of one machine now."""

    chassis: str
    name: str
    model: str
    last_seen: int | None = None
    arrived: float | None = None
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    """msg_type → field → latest value."""
    gps: tuple[float, float, int] | None = None

    def online(self, now: float) -> bool:
        return self.arrived is not None and now - self.arrived <= OFFLINE_AFTER_S

    def latest(self) -> dict[str, Any]:
        """The latest value of every field, whatever its message type."""
        merged: dict[str, Any] = {}
        for values in self.values.values():
            merged.update(values)
        return merged

    def update(self, msg_type: str, values: dict[str, Any], ts: int, arrived: float | None) -> None:
        self.values.setdefault(msg_type, {}).update(values)
        if arrived is not None:
            self.arrived = arrived
        self.last_seen = max(ts, self.last_seen or ts)
        lat, lng = values.get(GPS_LAT), values.get(GPS_LNG)
        if (
            isinstance(lat, int | float)
            and isinstance(lng, int | float)
            and (self.gps is None or ts >= self.gps[2])
        ):
            self.gps = (float(lat), float(lng), ts)


class OrgFleet:
    """The machines of one organisation, fed by their live channels (see the module doc)."""

    def __init__(
        self, hub: Fanout, store: Store, meta: Metadata, catalog: Catalog, org: str
    ) -> None:
        self.hub, self.store, self.meta, self.catalog = hub, store, meta, catalog
        self.org = org
        self.machines: dict[str, FleetMachine] = {}
        self.observers: list[Observer] = []
        self.users = 0
        self.kept = False
        self._listeners: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {}
        self._lock = asyncio.Lock()
        self._refreshed = -MACHINES_REFRESH_S

    async def ensure(self, force: bool = False) -> None:
        """Know the organisation's current machines (re-read every 30 s) and listen to them."""
        if not force and time.monotonic() - self._refreshed < MACHINES_REFRESH_S:
            return
        async with self._lock:
            if not force and time.monotonic() - self._refreshed < MACHINES_REFRESH_S:
                return
            rows = await self.meta.list_machines(self.org)
            current = {row.chassis_id for row in rows}
            met: list[FleetMachine] = []
            for row in rows:
                machine = self.machines.get(row.chassis_id)
                if machine is not None:
                    machine.name, machine.model = row.name, row.model
                    continue
                machine = FleetMachine(row.chassis_id, row.name, row.model)
                self.machines[row.chassis_id] = machine
                for msg_type in MsgType:
                    channel = live_channel(self.org, row.chassis_id, msg_type.value)
                    listener = self._listener(machine, msg_type.value)
                    self._listeners[channel] = listener
                    await self.hub.listen(channel, listener)
                met.append(machine)
            await self._seed(met)
            for chassis in set(self.machines) - current:
                del self.machines[chassis]
                for msg_type in MsgType:
                    await self._unlisten(live_channel(self.org, chassis, msg_type.value))
            self._refreshed = time.monotonic()

    async def close(self) -> None:
        """Stop listening (the last user left)."""
        async with self._lock:
            for channel in list(self._listeners):
                await self._unlisten(channel)
            self.machines.clear()
            self._refreshed = -MACHINES_REFRESH_S

    async def _unlisten(self, channel: str) -> None:
        listener = self._listeners.pop(channel, None)
        if listener is not None:
            await self.hub.unlisten(channel, listener)

    def _listener(
        self, machine: FleetMachine, msg_type: str
    ) -> Callable[[dict[str, Any], dict[str, Any]], None]:
        def on_message(values: dict[str, Any], head: dict[str, Any]) -> None:
            ts = int(head["ts"])
            machine.update(msg_type, values, ts, time.monotonic())
            for observer in self.observers:
                try:
                    observer(machine, msg_type, values, head)
                except Exception:
                    log.exception("a fleet observer of %s failed", self.org)

        return on_message

    async def _seed(self, machines: list[FleetMachine]) -> None:
        """The newest stored values of the machines met for the first time (once).

        Their newest timestamps come from one :meth:`~livedata.store.base.Store.latest_many`,
        then per message type one :meth:`~livedata.store.base.Store.latest_values_many`
        reads the latest value of each of their catalog fields within :data:`SEED_WINDOW_MS`
        before their newest record (each a read per 500 machines, not a query per machine
        and message type).
        """
        if not machines:
            return
        newest = await self.store.latest_many(self.org, [m.chassis for m in machines])
        met = [machine for machine in machines if newest[machine.chassis]]
        infos = [await self.catalog.machine(self.org, machine.chassis) for machine in met]
        for msg_type in MsgType:
            wanted: dict[str, tuple[int, list[str]]] = {}
            for machine, info in zip(met, infos, strict=True):
                latest = newest[machine.chassis].get(msg_type.value)
                if latest is None:
                    continue
                names = []
                if info is not None:
                    fields = await self.catalog.fields(info, msg_type.value)
                    names = [f["name"] for f in fields]
                wanted[machine.chassis] = (latest, names)
            if not wanted:
                continue
            values = await self.store.latest_values_many(
                self.org, msg_type.value, wanted, SEED_WINDOW_MS
            )
            for machine in met:
                if machine.chassis in wanted:
                    latest = wanted[machine.chassis][0]
                    _seed_stream(machine, msg_type.value, values[machine.chassis], latest)


def _seed_stream(machine: FleetMachine, msg_type: str, values: dict[str, Any], latest: int) -> None:
    """Seed ``machine``'s ``msg_type`` with its stored ``values``, newest at ``latest``."""
    age = time.time() - latest / 1000
    arrived = time.monotonic() - max(0.0, age) if age <= OFFLINE_AFTER_S else None
    if machine.last_seen is None or latest > machine.last_seen:
        machine.update(msg_type, values, latest, arrived)
    else:
        machine.values.setdefault(msg_type, {}).update(values)


class Fleet:
    """The fleet state of every organisation in use in this process (see the module doc)."""

    def __init__(self, hub: Fanout, store: Store, meta: Metadata, catalog: Catalog) -> None:
        self.hub, self.store, self.meta, self.catalog = hub, store, meta, catalog
        self._orgs: dict[str, OrgFleet] = {}
        self._lock = asyncio.Lock()

    def get(self, org: str) -> OrgFleet | None:
        """The organisation's state when some user holds it."""
        return self._orgs.get(org)

    async def acquire(self, org: str) -> OrgFleet:
        """The organisation's state, up to date; the caller :meth:`release` s it when done."""
        async with self._lock:
            state = self._orgs.get(org)
            if state is None:
                state = self._orgs[org] = OrgFleet(
                    self.hub, self.store, self.meta, self.catalog, org
                )
            state.users += 1
        try:
            await state.ensure()
        except BaseException:
            await self.release(state)
            raise
        return state

    async def release(self, state: OrgFleet) -> None:
        async with self._lock:
            state.users -= 1
            if state.users > 0 or state.kept:
                return
            if self._orgs.get(state.org) is state:
                del self._orgs[state.org]
        await state.close()

    async def keep(self, org: str) -> OrgFleet:
        """The organisation's state, held for the life of the process (the fleet summary)."""
        async with self._lock:
            state = self._orgs.get(org)
            if state is None:
                state = self._orgs[org] = OrgFleet(
                    self.hub, self.store, self.meta, self.catalog, org
                )
            state.kept = True
        await state.ensure()
        return state


__all__ = ["OFFLINE_AFTER_S", "Fleet", "FleetMachine", "OrgFleet"]
