"""The device link of HTTP ingest: each ``POST /api/ingest/{orgId}/{chassisId}/{msgType}``
(:mod:`livedata.gateway.ingest_http`) becomes a delivery, as a broker's message does.

:meth:`HttpDeviceLink.post` decodes the body (:mod:`livedata.codec`; what cannot be
read is a :class:`~livedata.devices.base.Rejection`), queues the delivery, and waits
for ingest's verdict on it: ingest reads this link like any other
(:func:`~livedata.pipeline.ingest.consume_devices`, what has gathered in one
``handle_many``, so concurrent requests share a batch) and hands each request its
outcome back through :meth:`HttpDeviceLink.settle`.  The request then waits for the
delivery's acknowledgement (stored and logged, as an MQTT message's PUBACK) with
:attr:`Posted.stored`.

The machine's identity comes from the URL only (the gateway checked the machine's
secret before); there are no direct methods and no presence over HTTP: a machine is
never *connected* to this link.

Under stress: the queue is bounded (``http://?queue=N``, default 1,000 requests); a
request waits while it is full, and ingest's own queue makes ``handle_many`` wait
while the store is slow, so requests slow down rather than memory growing — for at
most ``wait`` seconds (:meth:`HttpDeviceLink.post`), then :class:`TimeoutError` (the
route answers 503 with ``Retry-After``).  A request whose client went away, or that
timed out once queued, is still stored (its outcome is dropped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from livedata.codec import decode
from livedata.devices.base import Delivery, QueueLink, Rejection
from livedata.errors import DecodeError

__all__ = ["HttpDeviceLink", "Posted"]


@dataclass(frozen=True, slots=True)
class _Request(Delivery):
    reply: asyncio.Future[object] | None = None


@dataclass(frozen=True, slots=True)
class _Unreadable(Rejection):
    reply: asyncio.Future[object] | None = None


@dataclass(frozen=True, slots=True)
class Posted:
    """What ingest made of a request: ``outcome`` is its record or why it was refused
    (:class:`~livedata.pipeline.ingest.Refused`); ``stored`` is set once it is durable
    and logged (never for a refused one)."""

    outcome: object
    stored: asyncio.Event


class HttpDeviceLink(QueueLink):
    def __init__(self, url: str = "http://?queue=1000") -> None:
        super().__init__(url)

    async def post(
        self, tenant: str, chassis: str, msg_type: str, body: bytes, wait: float | None = None
    ) -> Posted:
        """Hand one request's body to ingest; its :class:`Posted` once ingest took it.

        :class:`TimeoutError` if that takes more than ``wait`` seconds (room in the queue,
        then ingest's verdict); once queued, the message is still handled."""
        reply: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        stored = asyncio.Event()

        async def ack() -> None:
            stored.set()

        item: Delivery | Rejection
        try:
            item = _Request(decode(tenant, chassis, msg_type, body), ack, reply)
        except DecodeError as exc:
            item = _Unreadable(tenant, chassis, str(exc), None, reply)
        async with asyncio.timeout(wait):
            await self._queue.put(item)
            outcome = await reply
        return Posted(outcome, stored)

    def settle(self, batch: Sequence[Delivery | Rejection], outcomes: Sequence[object]) -> None:
        for item, outcome in zip(batch, outcomes, strict=True):
            reply = item.reply if isinstance(item, _Request | _Unreadable) else None
            if reply is not None and not reply.done():
                reply.set_result(outcome)
