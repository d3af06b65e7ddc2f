"""The decoding configuration as the roles see it: which machines exist, which DBC decodes them.

Read from the metadata database and cached (``ttl`` seconds, default 10), so
ingest does not query the database per message; the API invalidates the cache
on every change it makes, other processes see changes within ``ttl`` (plus the
time of one reload).  An organisation whose cache is older than ``ttl`` is
reloaded in the background while callers keep getting the cached machines, so
ingest never waits for the database except for an organisation's first load (or
the first after an invalidation); a reload that fails is logged and retried after
``ttl``, the cached machines serving meanwhile.  Parsed
DBC files are cached by id (uploaded files never change, a new upload is a new id),
at most :data:`MAX_DECODERS`; a file is parsed in a worker thread (a 10,000-signal
file takes seconds) and callers asking for it meanwhile share that one parse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from livedata.decode.can import CanDecoder
from livedata.decode.dm1 import SUMMARY_FIELDS
from livedata.errors import BackendError, NotFound
from livedata.metadata import Metadata
from livedata.metadata.tables import DbcFile
from livedata.model import MsgType
from livedata.pipeline.limits import check_field_count

MAX_DECODERS = 256

log = logging.getLogger("livedata.catalog")


@dataclass(frozen=True, slots=True)
class MachineInfo:
    tenant: str
    chassis: str
    name: str
    model: str
    decoder: CanDecoder | None
    dbc_name: str | None
    tags: tuple[str, ...] = ()
    location: str = ""
    disabled: bool = False
    """Ingest refuses a disabled machine's data."""
    dbc_override: int | None = None
    """The machine's own DBC file (else its model's)."""
    dbc_id: int | None = None
    """The DBC file that decodes it (its own or its model's)."""


class Catalog:
    """Cached view of each organisation's machines and decoders.

    An organisation is loaded whole (three queries) and kept for ``ttl`` seconds;
    one load runs at a time per organisation (callers of a first load wait for it,
    a stale organisation is reloaded in the background), so a fleet of any size
    costs one load per ``ttl``, not one per machine.
    """

    def __init__(self, meta: Metadata, ttl: float = 10.0, max_fields: int = 1_000) -> None:
        self.meta = meta
        self.ttl = ttl
        self.max_fields = max_fields
        self._orgs: dict[str, tuple[float, dict[str, MachineInfo]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._decoders: OrderedDict[int, CanDecoder] = OrderedDict()
        self._parsing: dict[int, asyncio.Future[CanDecoder]] = {}
        self._fields: dict[str, dict[tuple[str, str], set[str]]] = {}
        self._reloads: dict[str, asyncio.Task[None]] = {}
        self._generation = 0
        """Bumped by :meth:`invalidate`: a reload begun before it does not store its result."""

    def invalidate(self) -> None:
        self._generation += 1
        self._orgs.clear()
        self._fields.clear()  # a deleted machine's names are gone from the database

    def cached(self, tenant: str) -> dict[str, MachineInfo] | None:
        """The organisation's machines by chassis id, without waiting: ``None`` until its
        first load (then :meth:`machines`); a stale one is returned and reloaded in the
        background.  Callers must not change the dict."""
        cached = self._orgs.get(tenant)
        if cached is None:
            return None
        if time.monotonic() - cached[0] >= self.ttl and tenant not in self._reloads:
            task = asyncio.create_task(
                self._reload(tenant, self._generation), name=f"catalog-reload-{tenant}"
            )
            self._reloads[tenant] = task
            task.add_done_callback(lambda _t: self._reloads.pop(tenant, None))
        return cached[1]

    async def machines(self, tenant: str) -> dict[str, MachineInfo]:
        """:meth:`cached`, waiting for the organisation's first load if need be."""
        machines = self.cached(tenant)
        if machines is not None:
            return machines
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            cached = self._orgs.get(tenant)
            if cached is None:
                cached = (time.monotonic(), await self._load(tenant))
                self._orgs[tenant] = cached
        return cached[1]

    async def machine(self, tenant: str, chassis: str) -> MachineInfo | None:
        """The machine, or ``None`` when the organisation has no such machine."""
        return (await self.machines(tenant)).get(chassis)

    async def require_machine(self, tenant: str, chassis: str) -> MachineInfo:
        """The machine; :class:`~livedata.errors.NotFound` when the organisation has none such."""
        info = await self.machine(tenant, chassis)
        if info is None:
            raise NotFound(f"machine {chassis!r} not found in organisation {tenant!r}")
        return info

    async def describe_machine(self, tenant: str, chassis: str) -> dict[str, Any]:
        """The machine as the API shows it: names, DBC, tags and the fields of each type."""
        info = await self.require_machine(tenant, chassis)
        return {
            "chassisId": info.chassis,
            "name": info.name,
            "model": info.model,
            "dbc": info.dbc_name,
            "dbcOverride": info.dbc_override,
            "tags": list(info.tags),
            "location": info.location,
            "disabled": info.disabled,
            "msgTypes": {t.value: {"fields": await self.fields(info, t.value)} for t in MsgType},
        }

    async def _reload(self, tenant: str, generation: int) -> None:
        """Reload a stale organisation in the background (see the module doc); the result is
        dropped when :meth:`invalidate` was called since ``generation``."""
        try:
            machines = await self._load(tenant)
        except BackendError as exc:  # the database is away: serve what is cached, retry later
            log.warning(
                "reloading the machines of %r failed, retrying in %g s: %s", tenant, self.ttl, exc
            )
            cached = self._orgs.get(tenant)
            if cached is not None and generation == self._generation:
                self._orgs[tenant] = (time.monotonic(), cached[1])
            return
        if generation == self._generation:
            self._orgs[tenant] = (time.monotonic(), machines)

    async def _load(self, tenant: str) -> dict[str, MachineInfo]:
        machines: dict[str, MachineInfo] = {}
        for machine, dbc in await self.meta.org_decoding(tenant):
            decoder = await self.decoder(dbc) if dbc is not None else None
            machines[machine.chassis_id] = MachineInfo(
                tenant,
                machine.chassis_id,
                machine.name,
                machine.model,
                decoder,
                dbc.name if dbc else None,
                tuple(machine.tags or ()),
                machine.location,
                machine.disabled,
                machine.dbc_id,
                dbc.id if dbc else None,
            )
        return machines

    async def decoder(self, dbc: DbcFile) -> CanDecoder:
        """DBC file ``dbc`` parsed with its J1939 options: from the cache, or in a thread."""
        dbc_id = dbc.id
        decoder = self._decoders.get(dbc_id)
        if decoder is None:
            pending = self._parsing.get(dbc_id)
            if pending is None:
                pending = asyncio.ensure_future(
                    asyncio.to_thread(
                        CanDecoder.from_dbc,
                        dbc.content,
                        j1939=dbc.j1939,
                        separate_sources=dbc.separate_sources,
                    )
                )
                self._parsing[dbc_id] = pending
                pending.add_done_callback(lambda _f: self._parsing.pop(dbc_id, None))
            decoder = await asyncio.shield(pending)
            self._decoders[dbc_id] = decoder
            while len(self._decoders) > MAX_DECODERS:
                self._decoders.popitem(last=False)
        self._decoders.move_to_end(dbc_id)
        return decoder

    def fields_known(
        self, tenant: str, chassis: str, msg_type: str, names: Collection[str]
    ) -> bool:
        """Whether :meth:`note_fields` has nothing to do for ``names`` (all remembered
        already), without waiting: callers await it only when not."""
        org = self._fields.get(tenant)
        if org is None:
            return False
        seen = org.get((chassis, msg_type))
        return seen is not None and seen.issuperset(names)

    async def note_fields(
        self, tenant: str, chassis: str, msg_type: str, names: Collection[str]
    ) -> None:
        """Remember ``client_raw_data`` field names a machine sent (persisted once each).

        An organisation's known fields are loaded in one query on first use; after that
        only a name never seen before costs a database write (one statement).  A message
        that would give a machine more than ``max_fields`` fields of one message type is
        refused (:func:`~livedata.pipeline.limits.check_field_count`).  ``names`` may be
        a record's ``values.keys()``: the usual message, all names known, builds no set."""
        if self.fields_known(tenant, chassis, msg_type, names):
            return
        await self.save_fields(tenant, await self.claim_fields(tenant, chassis, msg_type, names))

    async def claim_fields(
        self, tenant: str, chassis: str, msg_type: str, names: Collection[str]
    ) -> list[tuple[str, str, str]]:
        """:meth:`note_fields` in two steps, for a batch of messages: check ``names`` and
        take the new ones as known (refused as there: :class:`DecodeError`), returning
        them as ``(chassis, msg_type, name)`` rows for one :meth:`save_fields` of the
        batch.  Waits only for the organisation's first load."""
        org = self._fields.get(tenant)
        if org is None:
            async with self._locks.setdefault(tenant, asyncio.Lock()):
                org = self._fields.get(tenant)
                if org is None:
                    org = self._fields[tenant] = await self.meta.org_fields(tenant)
        known = org.setdefault((chassis, msg_type), set())
        new = set(names) - known
        if not new:
            return []
        where = f"{chassis!r} of organisation {tenant!r}"
        check_field_count(where, msg_type, len(known), new, self.max_fields)
        known |= new
        return [(chassis, msg_type, name) for name in sorted(new)]

    async def save_fields(self, tenant: str, rows: list[tuple[str, str, str]]) -> None:
        """Persist what :meth:`claim_fields` took, in one statement; if that fails the
        names are forgotten again (the next message with them retries) and it raises."""
        if not rows:
            return
        try:
            await self.meta.add_fields_many(tenant, rows)
        except BaseException:
            org = self._fields.get(tenant, {})
            for chassis, msg_type, name in rows:
                org.get((chassis, msg_type), set()).discard(name)
            raise

    async def forget_field(self, tenant: str, chassis: str, msg_type: str, name: str) -> bool:
        """Delete a remembered field (whether it existed); its stored values stay until
        retention removes them."""
        removed = await self.meta.delete_field(tenant, chassis, msg_type, name)
        org = self._fields.get(tenant)
        if org is not None:
            org.get((chassis, msg_type), set()).discard(name)
        return removed

    async def fields(self, info: MachineInfo, msg_type: str) -> list[dict[str, Any]]:
        """The fields a machine can deliver for ``msg_type``, with unit, min, max and choices.

        ``choices`` is the signal's value table (``{"-1": "R", "0": "N"}``) or ``None``,
        ``resolution`` its scale (``None``: unknown); a J1939 DBC adds the DTC summary
        fields (``dtc_active``, ``lamp_*``).
        """
        if msg_type == MsgType.VEHICLE_CAN:
            if info.decoder is None:
                return []
            fields = [
                {k: v for k, v in s.to_dict().items() if k != "message"}
                for s in info.decoder.signals()
            ]
            if info.decoder.j1939:
                fields += [
                    {
                        "name": name,
                        "unit": "",
                        "min": lo,
                        "max": hi,
                        "choices": _choices(choices),
                        "resolution": 1,
                    }
                    for name, lo, hi, choices in SUMMARY_FIELDS
                ]
            return fields
        names = await self.meta.list_fields(info.tenant, info.chassis, msg_type)
        return [
            {
                "name": n,
                "unit": UNITS.get(n, ""),
                "min": None,
                "max": None,
                "choices": None,
                "resolution": None,
            }
            for n in names
        ]


def _choices(choices: dict[int, str] | None) -> dict[str, str] | None:
    return {str(k): v for k, v in choices.items()} if choices is not None else None


UNITS = {
    "gps_lat": "°",
    "gps_lng": "°",
    "cpu_usage": "%",
    "mem_usage": "%",
    "disk_usage": "%",
    "app_uptime_s": "s",
    "signal_strength_dbm": "dBm",
}
"""Units of the well-known ``client_raw_data`` metrics (they have no DBC to say so)."""
