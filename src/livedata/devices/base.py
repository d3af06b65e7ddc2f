"""The device link: telemetry in from machines (later: direct methods out, presence)."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from livedata.model import DeviceMessage


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
    def inbound(self) -> AsyncIterator[DeviceMessage]:
        """Server side: messages in arrival order, until closed."""
