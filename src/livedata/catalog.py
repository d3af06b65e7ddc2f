"""The decoding configuration as the roles see it: which machines exist, which DBC decodes them.

Read from the metadata database and cached (``ttl`` seconds, default 10), so
ingest does not query the database per message; the API invalidates the cache
on every change it makes, other processes see changes within ``ttl``.  Parsed
DBC files are cached by id (uploaded files never change, a new upload is a new id).
"""

from __future__ import annotations

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


class Catalog:
    def __init__(self, meta: Metadata, ttl: float = 10.0) -> None:
        self.meta = meta
        self.ttl = ttl
        self._machines: dict[tuple[str, str], tuple[float, MachineInfo | None]] = {}
        self._decoders: dict[int, CanDecoder] = {}
        self._fields: dict[tuple[str, str, str], set[str]] = {}

    def invalidate(self) -> None:
        self._machines.clear()

    async def machine(self, tenant: str, chassis: str) -> MachineInfo | None:
        """The machine, or ``None`` when the organisation has no such machine."""
        key = (tenant, chassis)
        cached = self._machines.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        info = await self._load(tenant, chassis)
        self._machines[key] = (now, info)
        return info

    async def _load(self, tenant: str, chassis: str) -> MachineInfo | None:
        machines = {m.chassis_id: m for m in await self.meta.list_machines(tenant)}
        machine = machines.get(chassis)
        if machine is None:
            return None
        dbc = await self.meta.machine_dbc(tenant, chassis)
        decoder = None
        if dbc is not None:
            decoder = self._decoders.get(dbc.id)
            if decoder is None:
                decoder = self._decoders[dbc.id] = CanDecoder.from_dbc(dbc.content)
        return MachineInfo(
            tenant, chassis, machine.name, machine.model, decoder, dbc.name if dbc else None
        )

    async def note_fields(self, tenant: str, chassis: str, msg_type: str, names: set[str]) -> None:
        """Remember ``client_raw_data`` field names a machine sent (persisted once each)."""
        key = (tenant, chassis, msg_type)
        known = self._fields.get(key)
        if known is None:
            known = self._fields[key] = set(await self.meta.list_fields(*key))
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
