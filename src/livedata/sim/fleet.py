"""A simulated fleet of wheel loaders that sends what real machines would send.

Each machine sends, once per period, one ``vehicle_can`` :class:`DeviceMessage` (the
CAN frames of the second, encoded through the DBC) and one ``client_raw_data``
message (GPS and app metrics).  :meth:`Fleet.backfill` first sends the preceding
minutes as ``backfill`` so a fresh demo opens with history; :meth:`Fleet.run` then
streams real-time messages until cancelled, after filling in (as backfill) the
seconds that passed while the backfill was sent, so history has no hole.

Behaviour under stress:

- The machines do not all sample at the same instant (real ones never do): the
  period is cut into up to ``len(machines)`` slots at least ``MIN_SLOT_S`` apart, and
  each machine samples and sends in its own slot, stamped with the slot's time
  (slot ``j`` of period ``k`` at ``k * period + j * period / slots``).  So the fleet's
  work (stepping a machine, encoding its frames) is spread over the period instead
  of one burst per tick in which the last machine waits for all the others, and
  ingest, the log and the live channels take each machine's message as it comes.
- Slots are aligned to wall-clock multiples of the period and computed afresh from
  the clock each time, so there is no drift.  A slot more than a period late (the
  fleet could not keep up) is skipped -- its machines send at their next slot --
  not sent late in a burst.
- ``send`` is awaited one message at a time, so a slow consumer slows the fleet (it
  is the back-pressure); an exception from ``send`` is logged and that one message
  dropped, and the fleet carries on.  Cancellation stops :meth:`run` at once.
- A machine whose real-time flag is off keeps running (its state keeps evolving) but
  sends nothing from :meth:`run`.  :meth:`handle_method` answers the direct methods
  ``startMs`` / ``endMs`` / ``getStatus`` (see :func:`livedata.devices.base.answer_realtime`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from livedata.devices.base import MethodResult, answer_realtime
from livedata.errors import ConfigError, NotFound
from livedata.model import DeviceMessage, Kind, MsgType, valid_id
from livedata.sim.machine import Machine

if TYPE_CHECKING:  # imported where used: cantools is slow to import
    from livedata.decode.can import CanDecoder

__all__ = ["Fleet", "default_chassis_ids"]

log = logging.getLogger(__name__)

Send = Callable[[DeviceMessage], Awaitable[None]]

MAX_CATCH_UP_S = 600
"""At most this many seconds between backfill and run() are filled in as backfill."""
MIN_SLOT_S = 0.02
"""Real-time slots of one period are at least this far apart (see the module doc): each
slot wakes ingest, the log, distribute and the fan-out once, so fewer, fuller slots cost
less CPU (measured with 100 machines at 1 Hz and store batches of 1 s: 50 slots a second
take 12-13 % of a core, one burst 8-9 %), and a machine waits for at most a few others
of its slot (0.1-0.3 ms each)."""


def default_chassis_ids(n: int) -> list[str]:
    """``["WL-0001", …]``: ids for ``n`` simulated wheel loaders."""
    return [f"WL-{i:04d}" for i in range(1, n + 1)]


class Fleet:
    """Simulated machines of one tenant, sending through ``send``.

    Each machine is seeded with ``seed`` and its chassis id, so a fleet replays the
    same data for the same ids.  The simulation advances one second per period
    whatever ``period`` is (tests use short periods).
    """

    def __init__(
        self,
        tenant: str,
        chassis_ids: list[str],
        decoder: CanDecoder,
        send: Send,
        period: float = 1.0,
        seed: int = 0,
    ) -> None:
        if period <= 0:
            raise ConfigError(f"fleet period must be positive, got {period}")
        bad = [c for c in chassis_ids if not valid_id(c)]
        if bad:
            raise ConfigError(f"invalid chassis ids: {bad[:5]}")
        if len(set(chassis_ids)) != len(chassis_ids):
            raise ConfigError("duplicate chassis ids in the fleet")
        self.tenant = tenant
        self.period = period
        self._send = send
        self._machines = {c: Machine(c, decoder, seed) for c in chassis_ids}
        self._realtime = dict.fromkeys(chassis_ids, True)
        self._resume_ms: int | None = None
        self._phase = self._phases()

    def machine_ids(self) -> list[str]:
        """The chassis ids, in the order given."""
        return list(self._machines)

    def machine(self, chassis: str) -> Machine:
        """The simulated machine; :class:`NotFound` for an id not in the fleet."""
        try:
            return self._machines[chassis]
        except KeyError:
            raise NotFound(f"no simulated machine {chassis!r}") from None

    def set_realtime(self, chassis: str, on: bool) -> None:
        """Switch a machine's real-time stream on or off (:class:`NotFound` if unknown)."""
        self.machine(chassis)
        self._realtime[chassis] = on

    def is_realtime(self, chassis: str) -> bool:
        """Whether the machine streams in :meth:`run` (:class:`NotFound` if unknown)."""
        self.machine(chassis)
        return self._realtime[chassis]

    def knows(self, chassis: str) -> bool:
        return chassis in self._machines

    async def handle_method(self, chassis: str, method: str, payload: Any) -> MethodResult:
        """Answer a direct method of one machine (404 for a machine not in the fleet)."""
        if chassis not in self._machines:
            return MethodResult(404, {"error": f"no simulated machine {chassis!r}"})
        return answer_realtime(
            method,
            lambda: self._realtime[chassis],
            lambda on: self.set_realtime(chassis, on),
        )

    def _messages(self, machine: Machine, ts: int, kind: Kind) -> tuple[DeviceMessage, ...]:
        frames, values = machine.step(ts)
        return (
            DeviceMessage(
                self.tenant, machine.chassis, MsgType.VEHICLE_CAN, ts, kind, frames=tuple(frames)
            ),
            DeviceMessage(
                self.tenant, machine.chassis, MsgType.CLIENT_RAW_DATA, ts, kind, values=values
            ),
        )

    async def _deliver(self, message: DeviceMessage) -> None:
        try:
            await self._send(message)
        except Exception:  # one failed send must not stop the fleet
            log.exception("sim: sending %s of %s failed", message.msg_type, message.chassis)

    async def backfill(self, seconds: int, now_ms: int) -> None:
        """Send the ``seconds`` seconds up to ``now_ms`` as ``Kind.BACKFILL`` messages.

        ``now_ms`` is floored to the second (``base``); timestamps run from
        ``base - (seconds-1)*1000`` to ``base`` in 1000 ms steps (each machine's plus its
        slot's phase, :meth:`_phases`), oldest first, one ``vehicle_can`` and one
        ``client_raw_data`` message per machine and second,
        for every machine (whatever its real-time flag: history is always recorded).

        A following :meth:`run` continues from ``base + 1000``: the seconds that
        passed while the backfill was being sent (if any, and at most
        ``MAX_CATCH_UP_S``) are sent as backfill too before the first real-time tick,
        so history and live meet without a hole.
        """
        base = now_ms - now_ms % 1000
        for i in range(seconds - 1, -1, -1):
            await self._send_all(base - i * 1000, Kind.BACKFILL)
        self._resume_ms = base + 1000

    def _phases(self) -> dict[str, int]:
        """Each machine's milliseconds after the whole second: its slot's place in a 1 s
        period (see the module doc), so with the default period a machine's backfill and
        its real-time messages are one series 1 s apart."""
        slots = self.slots()
        return {c: round(j * 1000 / len(slots)) for j, slot in enumerate(slots) for c in slot}

    async def _send_all(self, ts: int, kind: Kind) -> None:
        """Send every machine's messages of the second ``ts``, each at its slot's phase."""
        for chassis, phase in self._phase.items():
            for message in self._messages(self._machines[chassis], ts + phase, kind):
                await self._deliver(message)

    async def _catch_up(self) -> None:
        """Send, as backfill, the whole seconds between the last backfill and the first tick."""
        resume, self._resume_ms = self._resume_ms, None
        if resume is None:
            return
        while True:
            first_tick = round((math.floor(time.time() / self.period) + 1) * self.period * 1000)
            missing = range(resume, first_tick, 1000)
            if not missing:
                return
            if len(missing) > MAX_CATCH_UP_S:
                log.warning("sim: %d s since the backfill, not catching up", len(missing))
                return
            for ts in missing:
                await self._send_all(ts, Kind.BACKFILL)
            resume = missing[-1] + 1000

    async def tick(self, ts: int, machines: list[str] | None = None) -> None:
        """Advance ``machines`` (default all) one second and send real-time messages stamped
        ``ts``.

        Machines whose real-time flag is off advance too but send nothing.
        """
        for chassis in self._machines if machines is None else machines:
            messages = self._messages(self._machines[chassis], ts, Kind.REALTIME)
            if self._realtime[chassis]:
                for message in messages:
                    await self._deliver(message)

    def slots(self) -> list[list[str]]:
        """The machines of each slot of a period, in slot order (see the module doc)."""
        count = max(1, min(len(self._machines), math.floor(round(self.period / MIN_SLOT_S, 6))))
        ids = list(self._machines)
        return [ids[j::count] for j in range(count)]

    async def run(self) -> None:
        """Send each slot's real-time messages at its wall-clock time until cancelled."""
        await self._catch_up()
        slots = self.slots()
        period_ms = self.period * 1000
        slot_s = self.period / len(slots)
        # slot n is due at n * slot_s; the first is slot 0 of the next period (where
        # _catch_up stopped)
        n = (math.floor(time.time() / self.period) + 1) * len(slots) - 1
        while True:
            now = time.time()
            n = max(n + 1, math.floor((now - self.period) / slot_s) + 1)
            await asyncio.sleep(max(0.0, n * slot_s - now))
            k, j = divmod(n, len(slots))
            await self.tick(round(k * period_ms + j * period_ms / len(slots)), slots[j])
