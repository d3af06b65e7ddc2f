"""The device link contract on the in-process link of the embedded shape."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from livedata.devices.base import DeviceLink, MethodHandler, MethodResult
from livedata.devices.local import LocalDeviceLink
from livedata.model import DeviceMessage
from tests.devices.contract import DeviceLinkContract


class _Organisation:
    """The machines of one organisation on a local link: one responder, as a fleet registers."""

    def __init__(self, link: LocalDeviceLink, tenant: str) -> None:
        self.handlers: dict[str, MethodHandler | None] = {}
        self.stop: Callable[[], None] = link.serve_methods(
            tenant, self.answer, self.handlers.__contains__
        )

    async def answer(self, chassis: str, method: str, payload: object) -> MethodResult:
        handler = self.handlers[chassis]
        if handler is None:
            return MethodResult(501, {"error": f"method {method!r} is not implemented"})
        return await handler(method, payload)


class LocalDevice:
    """One machine on a local link: sends through it and answers through its organisation."""

    def __init__(self, link: LocalDeviceLink, org: _Organisation, chassis: str) -> None:
        self.link = link
        self.org = org
        self.chassis = chassis

    async def send(self, message: DeviceMessage) -> None:
        await self.link.send(message)

    async def close(self) -> None:
        self.org.handlers.pop(self.chassis, None)


class TestLocalLink(DeviceLinkContract):
    redelivers = False

    @pytest.fixture(autouse=True)
    def _orgs(self) -> None:
        self.orgs: dict[tuple[int, str], _Organisation] = {}

    async def make_link(self) -> DeviceLink:
        link = LocalDeviceLink("local://?queue=1000")
        await link.start()
        return link

    async def make_device(
        self, link: DeviceLink, tenant: str, chassis: str, on_method: MethodHandler | None
    ) -> LocalDevice:
        assert isinstance(link, LocalDeviceLink)
        org = self.orgs.get((id(link), tenant))
        if org is None:
            org = self.orgs[(id(link), tenant)] = _Organisation(link, tenant)
        org.handlers[chassis] = on_method
        return LocalDevice(link, org, chassis)
