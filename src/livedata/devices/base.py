"""The device link: telemetry in from machines, direct methods out, presence.

Direct methods follow Azure IoT Hub's semantics: :meth:`DeviceLink.call` delivers
``method`` with a JSON ``payload`` to one machine and returns its
:class:`MethodResult` (``status``, ``payload``).  A machine that is not connected
(and does not connect within ``connect_timeout``) raises
:class:`~livedata.errors.DeviceNotConnected` at once; no answer within
``response_timeout`` raises :class:`~livedata.errors.DeviceTimeout`.  Machines
answer the real-time methods with :func:`answer_realtime`:

``startMs`` / ``endMs``
    switch real-time sending on / off; answer ``200 {"realtime": "on"|"off"}``.
``getStatus``
    answer ``200 {"realtime": "on"|"off", …}`` without changing anything.
anything else
    ``501 {"error": "method … not implemented"}``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from livedata.backends import redact
from livedata.errors import DeviceNotConnected
from livedata.model import DeviceMessage

log = logging.getLogger("livedata.devices")

Ack = Callable[[], Awaitable[None]]
"""Acknowledges a delivery to the link (e.g. MQTT PUBACK) once it is durable."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A device message as it arrived, with how to acknowledge it (``None``: nothing to do)."""

    message: DeviceMessage
    ack: Ack | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something a device sent that cannot be read (wrong encoding, truncated, foreign topic)."""

    tenant: str
    chassis: str
    reason: str
    ack: Ack | None = None


@dataclass(frozen=True, slots=True)
class MethodResult:
    """A machine's answer to a direct method: an HTTP-like ``status`` and a JSON payload."""

    status: int
    payload: Any = None


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Whether a machine is connected to the link, and since when (ms; ``None``: unknown)."""

    connected: bool
    since_ms: int | None = None


MethodHandler = Callable[[str, Any], Awaitable[MethodResult]]
"""Device side: ``handler(method, payload)`` answers one direct method."""

REALTIME_METHODS = ("startMs", "endMs", "getStatus")


def answer_realtime(
    method: str, is_on: Callable[[], bool], set_on: Callable[[bool], None]
) -> MethodResult:
    """The standard answer of a machine to ``startMs``, ``endMs``, ``getStatus`` (else 501)."""
    if method == "startMs":
        set_on(True)
    elif method == "endMs":
        set_on(False)
    elif method != "getStatus":
        return MethodResult(501, {"error": f"method {method[:64]!r} is not implemented"})
    return MethodResult(200, {"realtime": "on" if is_on() else "off"})


async def answer_method(handler: MethodHandler | None, method: str, raw: bytes, who: str) -> bytes:
    """Device side: run ``handler`` on a request's JSON payload ``raw``; the answer's body.

    The body is ``{"status": …, "payload": …}`` (``docs/device-protocol.md``): 501 without
    a handler, 400 for a payload that is not JSON, 500 (logged, naming ``who``) for a
    handler that raises.
    """
    try:
        payload = orjson.loads(raw) if raw else None
        if handler is None:
            result = MethodResult(501, {"error": f"method {method!r} is not implemented"})
        else:
            result = await handler(method, payload)
    except orjson.JSONDecodeError as exc:
        result = MethodResult(400, {"error": f"payload is not JSON: {exc}"})
    except Exception as exc:
        log.exception("device %s: method %s failed", who, method)
        result = MethodResult(500, {"error": str(exc)[:500]})
    return orjson.dumps({"status": result.status, "payload": result.payload})


class DeviceLink(abc.ABC):
    """Where device messages arrive; the identity (tenant, chassis) comes from the link."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect."""

    @abc.abstractmethod
    async def send(self, message: DeviceMessage) -> None:
        """Device side: hand one message to the link (waits while the link is full)."""

    @abc.abstractmethod
    def inbound(self) -> AsyncIterator[Delivery | Rejection]:
        """Server side: deliveries in arrival order, until the consuming task is cancelled."""

    async def batches(self, max_items: int) -> AsyncIterator[list[Delivery | Rejection]]:
        """Server side: :meth:`inbound` in lists of what had arrived (1 … ``max_items``).

        Ingest takes a list in one step (one queue operation, one wake-up of its writer
        per list instead of per message).  This default yields one delivery per list;
        links that receive in bulk override it.
        """
        async for delivery in self.inbound():
            yield [delivery]

    window: int | None = None
    """Server side: how many deliveries the link hands out unacknowledged at most, after
    which it sends nothing until an acknowledgement (``None``: no such limit)."""

    receive_telemetry: bool = True
    """Server side: whether :meth:`start` subscribes to telemetry (off in a gateway-only
    process, which uses the link for direct methods and presence only)."""

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
        """Server side: invoke a direct method on one machine and wait for its answer.

        :class:`~livedata.errors.DeviceNotConnected` when the machine is not connected
        within ``connect_timeout`` seconds (0: it must be connected now);
        :class:`~livedata.errors.DeviceTimeout` when no answer came in ``response_timeout``.
        """
        raise DeviceNotConnected(f"this device link ({redact(self.url)}) has no direct methods")

    def status(self, tenant: str, chassis: str) -> DeviceStatus:
        """Server side: whether the machine is connected now, as the link knows."""
        return DeviceStatus(False, None)

    def settle(self, batch: Sequence[Delivery | Rejection], outcomes: Sequence[object]) -> None:  # noqa: B027
        """Server side: what ingest made of a list from :meth:`batches` (a record or why it
        was refused, one each, in order).  Nothing by default; the HTTP link answers
        each request with its own."""


class QueueLink(DeviceLink):
    """A link whose deliveries wait in a bounded in-process queue (``?queue=N``, default
    10,000); whoever puts one in waits while it is full, so memory stays bounded."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        size = int(parse_qs(urlsplit(url).query).get("queue", ["10000"])[0])
        self._queue: asyncio.Queue[Delivery | Rejection] = asyncio.Queue(size)

    async def send(self, message: DeviceMessage) -> None:
        await self._queue.put(Delivery(message))

    async def inbound(self) -> AsyncIterator[Delivery | Rejection]:
        while True:
            yield await self._queue.get()

    async def batches(self, max_items: int) -> AsyncIterator[list[Delivery | Rejection]]:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < max_items and not queue.empty():
                batch.append(queue.get_nowait())
            yield batch

    def depth(self) -> int:
        return self._queue.qsize()
