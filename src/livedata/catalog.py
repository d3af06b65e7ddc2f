"""The decoding configuration as the roles see it: which machines exist, which DBC decodes them.

Read from the metadata database and cached (``ttl`` seconds, default 10), so
ingest does not query the database per message; the API invalidates the cache
on every change it makes, other processes see changes within ``ttl``.  Parsed
DBC files are cached by id (uploaded files never change, a new upload is a new id).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from livedata.decode.can import CanDecoder
from livedata.metadata import Metadata
from livedata.model import MsgType


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


class Catalog:
    """Cached view of each organisation's machines and decoders.

    An organisation is loaded whole (three queries) and kept for ``ttl`` seconds;
    one refresh runs at a time per organisation and the others wait for it, so a
    fleet of any size costs one load per ``ttl``, not one per machine.
    """

    def __init__(self, meta: Metadata, ttl: float = 10.0) -> None:
        self.meta = meta
        self.ttl = ttl
        self._orgs: dict[str, tuple[float, dict[str, MachineInfo]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._decoders: dict[int, CanDecoder] = {}
        self._fields: dict[str, dict[tuple[str, str], set[str]]] = {}

    def invalidate(self) -> None:
        self._orgs.clear()
        self._fields.clear()  # a deleted machine's names are gone from the database

    async def machine(self, tenant: str, chassis: str) -> MachineInfo | None:
        """The machine, or ``None`` when the organisation has no such machine."""
        cached = self._orgs.get(tenant)
        if cached is None or time.monotonic() - cached[0] >= self.ttl:
            lock = self._locks.setdefault(tenant, asyncio.Lock())
            async with lock:
                cached = self._orgs.get(tenant)
                if cached is None or time.monotonic() - cached[0] >= self.ttl:
                    cached = (time.monotonic(), await self._load(tenant))
                    self._orgs[tenant] = cached
        return cached[1].get(chassis)

    async def _load(self, tenant: str) -> dict[str, MachineInfo]:
        machines: dict[str, MachineInfo] = {}
        for machine, dbc in await self.meta.org_decoding(tenant):
            decoder = None
            if dbc is not None:
                decoder = self._decoders.get(dbc.id)
                if decoder is None:
                    decoder = self._decoders[dbc.id] = CanDecoder.from_dbc(dbc.content)
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
            )
        return machines

    async def note_fields(self, tenant: str, chassis: str, msg_type: str, names: set[str]) -> None:
        """Remember ``client_raw_data`` field names a machine sent (persisted once each).

        An organisation's known fields are loaded in one query on first use; after that
        only a name never seen before costs a database write (one statement)."""
        org = self._fields.get(tenant)
        if org is None:
            async with self._locks.setdefault(tenant, asyncio.Lock()):
                org = self._fields.get(tenant)
                if org is None:
                    org = self._fields[tenant] = await self.meta.org_fields(tenant)
        known = org.setdefault((chassis, msg_type), set())
        new = names - known
        if new:
            await self.meta.add_fields(tenant, chassis, msg_type, sorted(new))
            known |= new

    async def fields(self, info: MachineInfo, msg_type: str) -> list[dict[str, Any]]:
        """The fields a machine can deliver for ``msg_type``, with unit, min and max."""
        if msg_type == MsgType.VEHICLE_CAN:
            if info.decoder is None:
                return []
            return [
                {"name": s.name, "unit": s.unit, "min": s.minimum, "max": s.maximum}
                for s in info.decoder.signals()
            ]
        names = await self.meta.list_fields(info.tenant, info.chassis, msg_type)
        return [{"name": n, "unit": UNITS.get(n, ""), "min": None, "max": None} for n in names]


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
