"""The in-process device link of the embedded shape: the simulated fleet talks to ingest.

Under stress: a bounded queue (``local://?queue=N``, default 10,000 messages,
:class:`~livedata.devices.base.QueueLink`); a device's ``send`` waits while it is
full, the way a device's MQTT client waits for its acknowledgements, so nothing is
dropped and memory stays bounded.

Direct methods: a simulated fleet registers one responder per organisation with
:meth:`LocalDeviceLink.serve_methods` (the demo does so when its fleet starts); a
machine is *connected* while its organisation's responder is registered and knows
it.  :meth:`~LocalDeviceLink.call` runs the responder in process, with the same
timeouts and errors as over MQTT: an invalid method name is a
:class:`~livedata.errors.DecodeError`, a responder that raises is a 500 answer (logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livedata.devices.base import DeviceStatus, MethodResult, QueueLink
from livedata.errors import DecodeError, DeviceNotConnected, DeviceTimeout
from livedata.model import valid_id

log = logging.getLogger(__name__)

Responder = Callable[[str, str, Any], Awaitable[MethodResult]]


class LocalDeviceLink(QueueLink):
    def __init__(self, url: str = "local://") -> None:
        super().__init__(url)
        self._responders: dict[str, tuple[Responder, Callable[[str], bool], int]] = {}

    def serve_methods(
        self, tenant: str, responder: Responder, knows: Callable[[str], bool]
    ) -> Callable[[], None]:
        """Answer ``tenant``'s direct methods with ``responder(chassis, method, payload)``
        for the machines ``knows(chassis)`` accepts; returns the function that stops it."""
        entry = (responder, knows, int(time.time() * 1000))
        self._responders[tenant] = entry

        def stop() -> None:
            if self._responders.get(tenant) is entry:
                del self._responders[tenant]

        return stop

    def status(self, tenant: str, chassis: str) -> DeviceStatus:
        entry = self._responders.get(tenant)
        if entry is None or not entry[1](chassis):
            return DeviceStatus(False, None)
        return DeviceStatus(True, entry[2])

    async def call(
        self,
        tenant: str,
        chassis: str,
        method: str,
        payload: Any,
        *,
        response_timeout: float,
        connect_timeout: float = 0.0,
    ) -> MethodResult:
        """Run the responder in process, with the errors of the MQTT link (see the module doc)."""
        if not valid_id(method):
            raise DecodeError(f"method name {method[:64]!r} is not valid")
        deadline = time.monotonic() + connect_timeout
        while not self.status(tenant, chassis).connected:
            if time.monotonic() >= deadline:
                raise DeviceNotConnected(f"machine {chassis!r} of {tenant!r} is not connected")
            await asyncio.sleep(0.1)
        responder = self._responders[tenant][0]
        try:
            return await asyncio.wait_for(responder(chassis, method, payload), response_timeout)
        except TimeoutError:
            raise DeviceTimeout(
                f"machine {chassis!r} did not answer {method!r} in {response_timeout:g} s"
            ) from None
        except Exception as exc:  # the machine's failure is its answer, as over MQTT
            log.exception("machine %s of %s: method %s failed", chassis, tenant, method)
            return MethodResult(500, {"error": str(exc)[:500]})
