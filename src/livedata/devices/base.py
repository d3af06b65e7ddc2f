"""The device link: telemetry in from machines (later: direct methods out, presence)."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from livedata.model import DeviceMessage

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
