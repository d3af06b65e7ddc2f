"""The in-process device link of the embedded shape: the simulated fleet talks to ingest.

Under stress: a bounded queue (``local://?queue=N``, default 10,000 messages);
a device's ``send`` waits while it is full, the way a device's MQTT client waits
for its acknowledgements, so nothing is dropped and memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

from livedata.devices.base import Delivery, DeviceLink, Rejection
from livedata.model import DeviceMessage


class LocalDeviceLink(DeviceLink):
    def __init__(self, url: str = "local://") -> None:
        super().__init__(url)
        size = int(parse_qs(urlsplit(url).query).get("queue", ["10000"])[0])
        self._queue: asyncio.Queue[DeviceMessage] = asyncio.Queue(size)

    async def send(self, message: DeviceMessage) -> None:
        await self._queue.put(message)

    async def inbound(self) -> AsyncIterator[Delivery | Rejection]:
        while True:
            yield Delivery(await self._queue.get())

    def depth(self) -> int:
        return self._queue.qsize()
