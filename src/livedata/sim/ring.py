"""Pre-encoded payloads for a large simulated fleet: simulate a few machines, send as many.

Simulating a wheel loader (:class:`~livedata.sim.machine.Machine`) and encoding its
second costs about 170 µs; a fleet of 10,000 machines would need 1.7 s of CPU per
second for that alone.  :class:`PayloadRing` simulates at most ``templates``
machines (the first ids of the fleet, each exactly as :class:`Machine` with its own
seed) and encodes each of their seconds once; every other machine replays a
template's encoded seconds, patching in only its timestamp and backfill flag.  Each
machine sends the payloads of a real machine — CAN frames of the DBC that decode,
the DM1, the ``client_raw_data`` metrics — and machines that share a template are
``1 … spread`` seconds apart in its history (*ahead* of it, so no machine has to wait
for history to exist), so they do not move in step.  Beyond ``templates × (spread + 1)``
machines (6,100 by default) some machines send the same values as another one.

With no more machines than ``templates`` every machine is its own template, offset 0:
the fleet sends exactly what :class:`~livedata.sim.fleet.Fleet` would (tests
check it stored value by value).

Cost: ``templates`` machine steps per :meth:`advance` (about 17 ms for 100), and
``templates × (spread + 1)`` encoded seconds in memory (about 2 MB for 100 × 61);
creating the ring steps each template ``spread`` seconds ahead once.  Per machine
and second, :meth:`payloads` is one ``bytearray`` copy, one ``pack_into`` and one
``bytes`` join.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING

from livedata.codec import encode
from livedata.model import DeviceMessage, Kind, MsgType
from livedata.sim.machine import Machine

if TYPE_CHECKING:  # imported where used: cantools is slow to import
    from livedata.decode.can import CanDecoder

__all__ = ["PayloadRing"]

TEMPLATES = 100
"""Machines simulated by default; the rest replay them."""
SPREAD = 60
"""Seconds by which machines sharing a template are apart, at most."""

_TS = struct.Struct("<q")
_TS_AT = 2  # offset of the base timestamp in a vehicle_can payload (see livedata.codec)
_FLAGS_AT = 1
_JSON_HEAD = b'{"v":1,"ts":'
_JSON_KIND = {
    Kind.REALTIME: b',"kind":"realTime","values":',
    Kind.BACKFILL: b',"kind":"backfill","values":',
}


class PayloadRing:
    """The encoded seconds of ``templates`` simulated machines, shared by a whole fleet."""

    def __init__(
        self,
        chassis_ids: list[str],
        decoder: CanDecoder,
        seed: int = 0,
        *,
        templates: int = TEMPLATES,
        spread: int = SPREAD,
    ) -> None:
        if templates < 1 or spread < 1:
            raise ValueError("templates and spread must be at least 1")
        count = min(len(chassis_ids), templates)
        self._machines = [Machine(c, decoder, seed) for c in chassis_ids[:count]]
        self._slot: dict[str, tuple[int, int]] = {}
        for j, chassis in enumerate(chassis_ids):
            generation = j // count
            offset = 0 if generation == 0 else 1 + (generation * 37) % spread
            self._slot[chassis] = (j % count, offset)
        depth = max(offset for _, offset in self._slot.values()) + 1
        self._ahead: list[deque[tuple[bytes, bytes]]] = [deque() for _ in self._machines]
        for index in range(count):
            for _ in range(depth):
                self._ahead[index].append(self._encode(index))
        self.tick = 0
        """Seconds advanced so far."""

    @property
    def templates(self) -> int:
        return len(self._machines)

    def _encode(self, index: int) -> tuple[bytes, bytes]:
        """One more second of template ``index``: (vehicle_can at ts 0, the values' JSON)."""
        machine = self._machines[index]
        frames, values = machine.step(0)
        can = encode(
            DeviceMessage("t", machine.chassis, MsgType.VEHICLE_CAN, 0, frames=tuple(frames))
        )
        raw = encode(DeviceMessage("t", machine.chassis, MsgType.CLIENT_RAW_DATA, 0, values=values))
        head = _JSON_HEAD + b"0" + _JSON_KIND[Kind.REALTIME]
        if not (raw.startswith(head) and raw.endswith(b"}")):  # pragma: no cover - codec changed
            raise RuntimeError("the client_raw_data encoding is not the one the ring patches")
        return can, raw[len(head) : -1]

    def payloads(self, chassis: str, ts: int, kind: Kind = Kind.REALTIME) -> tuple[bytes, bytes]:
        """This second's ``vehicle_can`` and ``client_raw_data`` payloads of ``chassis``."""
        index, offset = self._slot[chassis]
        can, values = self._ahead[index][offset]
        buf = bytearray(can)
        _TS.pack_into(buf, _TS_AT, ts)
        if kind is Kind.BACKFILL:
            buf[_FLAGS_AT] |= 0x01
        return bytes(buf), b"".join((_JSON_HEAD, str(ts).encode(), _JSON_KIND[kind], values, b"}"))

    def advance(self) -> None:
        """Every machine moves on one second (each template steps once)."""
        for index, ahead in enumerate(self._ahead):
            ahead.popleft()
            ahead.append(self._encode(index))
        self.tick += 1
