"""The device link contract on the HTTP ingest link (what each POST /api/ingest request becomes)."""

from __future__ import annotations

import asyncio

import pytest

from livedata.codec import encode
from livedata.devices.base import Delivery, DeviceLink, MethodHandler, Rejection
from livedata.devices.http import HttpDeviceLink, Posted
from livedata.model import DeviceMessage
from livedata.pipeline.ingest import Refused
from tests.devices.contract import DeviceLinkContract, raw_message


class HttpDevice:
    """One machine posting to the link as the HTTP route does, each request on its own
    (the route's client sends the next one without waiting for the answer)."""

    def __init__(self, link: HttpDeviceLink, tenant: str, chassis: str) -> None:
        self.link = link
        self.tenant = tenant
        self.chassis = chassis
        self.requests: list[asyncio.Task[Posted]] = []

    def post(self, msg_type: str, body: bytes) -> asyncio.Task[Posted]:
        task = asyncio.create_task(self.link.post(self.tenant, self.chassis, msg_type, body))
        self.requests.append(task)
        return task

    async def send(self, message: DeviceMessage) -> None:
        self.post(message.msg_type, encode(message))
        await asyncio.sleep(0)  # the request reaches the link's queue, in order

    async def close(self) -> None:
        for task in self.requests:
            task.cancel()
        await asyncio.gather(*self.requests, return_exceptions=True)


class TestHttpLink(DeviceLinkContract):
    connections = False

    @pytest.fixture(autouse=True)
    def _devices(self) -> None:
        self.devices: dict[tuple[str, str], HttpDevice] = {}

    async def make_link(self) -> DeviceLink:
        link = HttpDeviceLink("http://?queue=100")
        await link.start()
        return link

    async def make_device(
        self, link: DeviceLink, tenant: str, chassis: str, on_method: MethodHandler | None
    ) -> HttpDevice:
        assert isinstance(link, HttpDeviceLink)
        device = self.devices[(tenant, chassis)] = HttpDevice(link, tenant, chassis)
        return device

    async def send_raw(
        self, link: DeviceLink, tenant: str, chassis: str, msg_type: str, payload: bytes
    ) -> None:
        device = self.devices.get((tenant, chassis))
        if device is None:
            device = await self.make_device(link, tenant, chassis, None)
        device.post(msg_type, payload)
        await asyncio.sleep(0)


async def test_each_request_gets_its_own_outcome_and_waits_for_its_ack() -> None:
    """settle() answers every request of a batch with its own outcome; stored follows the ack."""
    link = HttpDeviceLink()
    good = asyncio.create_task(
        link.post("acme", "M1", "client_raw_data", encode(raw_message("acme", "M1")))
    )
    bad = asyncio.create_task(link.post("acme", "M1", "client_raw_data", b"not json"))
    lists = link.batches(10)
    batch = await asyncio.wait_for(anext(lists), 5)
    while len(batch) < 2:
        batch += await asyncio.wait_for(anext(lists), 5)
    delivery, rejection = batch
    assert isinstance(delivery, Delivery) and isinstance(rejection, Rejection)
    assert rejection.ack is None and "JSON" in rejection.reason
    refused = Refused("decode_error", rejection.reason)
    link.settle(batch, [delivery.message, refused])
    posted_good, posted_bad = await asyncio.wait_for(asyncio.gather(good, bad), 5)
    assert posted_good.outcome == delivery.message and posted_bad.outcome == refused
    assert not posted_good.stored.is_set()
    assert delivery.ack is not None
    await delivery.ack()
    assert posted_good.stored.is_set() and not posted_bad.stored.is_set()
    await lists.aclose()


async def test_post_gives_up_after_its_wait_and_a_queued_request_is_still_handled() -> None:
    """Ingest not taking requests: post() times out, queued (handled later) or untaken (full)."""
    link = HttpDeviceLink("http://?queue=1")
    body = encode(raw_message("acme", "M1"))
    with pytest.raises(TimeoutError):  # queued, but no verdict in time
        await link.post("acme", "M1", "client_raw_data", body, wait=0.2)
    assert link.depth() == 1
    with pytest.raises(TimeoutError):  # the queue is full: not taken
        await link.post("acme", "M1", "client_raw_data", b"{}", wait=0.2)
    assert link.depth() == 1
    lists = link.batches(10)
    batch = await asyncio.wait_for(anext(lists), 5)
    assert len(batch) == 1 and isinstance(batch[0], Delivery)
    assert batch[0].message == raw_message("acme", "M1")
    link.settle(batch, [batch[0].message])  # the request that gave up has no one to answer
    assert link.depth() == 0
    await lists.aclose()
