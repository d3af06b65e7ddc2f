"""The device link contract, run on every link (and every device side of a link).

Subclass :class:`DeviceLinkContract` as ``Test<Link>`` and implement

- :meth:`~DeviceLinkContract.make_link`: a started server-side :class:`DeviceLink`;
- :meth:`~DeviceLinkContract.make_device`: one machine's device side, connected, that
  answers direct methods with the handler given;
- optionally :meth:`~DeviceLinkContract.send_raw` (a link that carries bytes: a device
  can send what does not decode) and :meth:`~DeviceLinkContract.crash_and_reopen` (a
  link that promises to redeliver what was not acknowledged when it comes back).

Every test has an organisation of its own (``tenant``), so a broker shared by the
tests of a module keeps them apart (topics, retained statuses).

What every link promises:

- **delivery**: each message a device sends arrives once, whole (both message types,
  realtime and backfill), with the tenant and chassis of the device that sent it, in
  the order that device sent it;
- **acknowledgement**: a delivery's ``ack`` is ``None`` (the link keeps nothing: done
  on arrival) or may be awaited any number of times; where the link promises
  redelivery, what was not acknowledged comes again after a reconnect, and what was
  does not;
- **commands** (links machines connect to: not HTTP, see ``connections``):
  :meth:`DeviceLink.call` reaches the one machine and returns its
  answer; a machine's handler that fails is a 500 answer, one that does not answer
  is :class:`DeviceTimeout`, a machine not connected is :class:`DeviceNotConnected`
  at once (or once ``connect_timeout`` has passed), an invalid method name is
  refused before anything is sent;
- **presence** (likewise): :meth:`DeviceLink.status` is connected while the device is and not
  after it left; a machine never seen is not connected;
- **bad input** (links that carry bytes): what cannot be read is one
  :class:`Rejection` naming the machine, and nothing else is lost.
"""

from __future__ import annotations

import abc
import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest

from livedata.codec import encode
from livedata.devices.base import (
    Delivery,
    DeviceLink,
    MethodHandler,
    MethodResult,
    Rejection,
    answer_realtime,
)
from livedata.errors import DecodeError, DeviceNotConnected, DeviceTimeout
from livedata.model import DeviceMessage, Frame, Kind, MsgType

TS = 1_700_000_000_000


class Device(Protocol):
    """One machine's side of a link, as the contract drives it."""

    async def send(self, message: DeviceMessage) -> None: ...

    async def close(self) -> None: ...


def can_message(
    tenant: str, chassis: str, ts: int = TS, kind: Kind = Kind.REALTIME
) -> DeviceMessage:
    frames = (
        Frame(ts, 0x0CF00400, True, bytes(range(8))),
        Frame(ts + 3, 0x123, False, b"\x01\x02\x03"),
    )
    return DeviceMessage(tenant, chassis, MsgType.VEHICLE_CAN, ts, kind, frames=frames)


def raw_message(tenant: str, chassis: str, ts: int = TS, **values: Any) -> DeviceMessage:
    return DeviceMessage(
        tenant, chassis, MsgType.CLIENT_RAW_DATA, ts, values=values or {"cpu_usage": 12.5}
    )


class Inbox:
    """A link's deliveries pumped into a queue, so a timed wait does not end ``inbound()``."""

    def __init__(self, link: DeviceLink) -> None:
        self.queue: asyncio.Queue[Delivery | Rejection] = asyncio.Queue()

        async def pump() -> None:
            async for item in link.inbound():
                self.queue.put_nowait(item)

        self.task = asyncio.create_task(pump())

    async def next(self, timeout: float = 10.0) -> Delivery | Rejection:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def delivery(self, timeout: float = 10.0) -> Delivery:
        item = await self.next(timeout)
        assert isinstance(item, Delivery), item
        return item

    async def nothing(self, wait: float = 0.5) -> None:
        await asyncio.sleep(wait)
        assert self.queue.empty(), f"unexpected {self.queue.get_nowait()}"

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met in {timeout} s")
        await asyncio.sleep(0.05)


class Realtime:
    """A machine's real-time flag behind the standard direct methods."""

    def __init__(self) -> None:
        self.on = True
        self.calls: list[tuple[str, Any]] = []

    async def __call__(self, method: str, payload: Any) -> MethodResult:
        self.calls.append((method, payload))
        return answer_realtime(method, lambda: self.on, lambda on: setattr(self, "on", on))


class DeviceLinkContract(abc.ABC):
    """Behaviour every device link must show (see the module doc)."""

    redelivers = False
    """Whether an unacknowledged delivery comes again after :meth:`crash_and_reopen`."""

    connections = True
    """Whether machines connect to the link: presence and direct methods (HTTP: neither,
    each request stands alone; the *commands* and *presence* tests are skipped)."""

    def needs_connections(self) -> None:
        if not self.connections:
            pytest.skip("machines do not connect to this link: no presence, no direct methods")

    @abc.abstractmethod
    async def make_link(self) -> DeviceLink:
        """A started server-side link of this backend, closed by the fixture."""

    @abc.abstractmethod
    async def make_device(
        self, link: DeviceLink, tenant: str, chassis: str, on_method: MethodHandler | None
    ) -> Device:
        """One machine's device side, connected (and known to ``link`` as connected)."""

    async def send_raw(
        self, link: DeviceLink, tenant: str, chassis: str, msg_type: str, payload: bytes
    ) -> None:
        """Send bytes as ``msg_type`` of that machine (links that carry bytes)."""
        pytest.skip("this link carries messages, not bytes: nothing undecodable can arrive")

    async def crash_and_reopen(self, link: DeviceLink) -> DeviceLink:
        """Kill ``link`` without acknowledging anything, then open it again as it was."""
        pytest.skip("this link promises no redelivery")

    async def crash_device(self, device: Device) -> None:
        """End the device's connection without a goodbye, as a crash or a lost network would."""
        pytest.skip("this link has no connection of its own per device")

    # -- fixtures ---------------------------------------------------------------------

    @pytest.fixture
    def tenant(self) -> str:
        return f"t{uuid.uuid4().hex[:10]}"

    @pytest.fixture
    async def parts(self) -> AsyncIterator[_Parts]:
        parts = _Parts(self)
        yield parts
        await parts.close()

    # -- delivery ---------------------------------------------------------------------

    async def test_delivers_both_types_whole_with_the_devices_identity(
        self, parts: _Parts, tenant: str
    ) -> None:
        """vehicle_can and client_raw_data, realtime and backfill, arrive whole with tenant and chassis."""
        link = await parts.link()
        inbox = parts.inbox(link)
        device = await parts.device(link, tenant, "M1")
        sent = [
            can_message(tenant, "M1"),
            raw_message(tenant, "M1", TS, gps_fix=True, mode="dig", rpm=1500),
            can_message(tenant, "M1", TS + 1000, Kind.BACKFILL),
        ]
        for message in sent:
            await device.send(message)
        received = []
        for _ in sent:
            item = await inbox.delivery()
            received.append(item.message)
            if item.ack is not None:
                await item.ack()
        assert received == sent
        await inbox.nothing()

    async def test_each_machine_in_order_and_every_message_once(
        self, parts: _Parts, tenant: str
    ) -> None:
        """Three machines × 30 messages: each arrives once, each machine's in the order sent."""
        link = await parts.link()
        inbox = parts.inbox(link)
        devices = [await parts.device(link, tenant, f"M{i}") for i in range(3)]
        for second in range(30):
            for device, chassis in zip(devices, ("M0", "M1", "M2"), strict=True):
                await device.send(raw_message(tenant, chassis, TS + second * 1000, n=second))
        got: dict[str, list[int]] = {"M0": [], "M1": [], "M2": []}
        for _ in range(90):
            item = await inbox.delivery()
            assert item.message.tenant == tenant
            got[item.message.chassis].append(item.message.ts)
            if item.ack is not None:
                await item.ack()
        assert all(stamps == [TS + s * 1000 for s in range(30)] for stamps in got.values()), got
        await inbox.nothing()

    async def test_batches_deliver_the_same_in_lists_of_at_most_max_items(
        self, parts: _Parts, tenant: str
    ) -> None:
        """batches(n), ingest's entry point: every message once, in order, in lists of 1 … n."""
        link = await parts.link()
        batches = getattr(link, "batches", None)
        if batches is None:  # the batching entry point of issue 17 is not on this branch yet
            pytest.skip("this DeviceLink has no batches()")
        device = await parts.device(link, tenant, "M1")
        for second in range(30):
            await device.send(raw_message(tenant, "M1", TS + second))
        stamps: list[int] = []
        lists = batches(7)
        async with asyncio.timeout(10):
            while len(stamps) < 30:
                items = await anext(lists)
                assert 1 <= len(items) <= 7
                for item in items:
                    assert isinstance(item, Delivery), item
                    stamps.append(item.message.ts)
                    if item.ack is not None:
                        await item.ack()
        await lists.aclose()
        assert stamps == [TS + s for s in range(30)]

    # -- acknowledgement --------------------------------------------------------------

    async def test_ack_may_be_awaited_twice(self, parts: _Parts, tenant: str) -> None:
        """A delivery's ack is None or idempotent: a second await neither fails nor sends again."""
        link = await parts.link()
        inbox = parts.inbox(link)
        device = await parts.device(link, tenant, "M1")
        await device.send(raw_message(tenant, "M1"))
        item = await inbox.delivery()
        if item.ack is not None:
            await item.ack()
            await item.ack()
        await device.send(raw_message(tenant, "M1", TS + 1))
        assert (await inbox.delivery()).message.ts == TS + 1

    @pytest.mark.parametrize("how", ["crash", "clean close"])
    async def test_unacknowledged_comes_again_after_a_reconnect_acknowledged_does_not(
        self, parts: _Parts, tenant: str, how: str
    ) -> None:
        """Where promised: what was delivered but not acked comes again (after a crash or a
        clean close of the link); what was acked does not."""
        if not self.redelivers:
            pytest.skip("this link promises no redelivery")
        link = await parts.link()
        inbox = parts.inbox(link)
        device = await parts.device(link, tenant, "M1")
        await device.send(raw_message(tenant, "M1", TS))
        first = await inbox.delivery()
        assert first.ack is not None
        await first.ack()
        await device.send(raw_message(tenant, "M1", TS + 1))
        second = await inbox.delivery()  # never acknowledged
        assert second.message.ts == TS + 1
        await inbox.stop()
        if how == "crash":
            reopened = await self.crash_and_reopen(link)
            parts.links.append(reopened)
        else:
            await link.close()
            reopened = await parts.link()
        again = parts.inbox(reopened)
        item = await again.delivery()
        assert item.message == second.message
        assert item.ack is not None
        await item.ack()
        await again.nothing(1.0)

    # -- commands ---------------------------------------------------------------------

    async def test_call_reaches_the_machine_and_returns_its_answer(
        self, parts: _Parts, tenant: str
    ) -> None:
        """startMs / endMs / getStatus reach the one machine, with the payload, and answer 200."""
        self.needs_connections()
        link = await parts.link()
        one, other = Realtime(), Realtime()
        await parts.device(link, tenant, "M1", one)
        await parts.device(link, tenant, "M2", other)
        result = await link.call(tenant, "M1", "endMs", {"why": "test"}, response_timeout=5)
        assert result == MethodResult(200, {"realtime": "off"})
        assert one.calls == [("endMs", {"why": "test"})] and one.on is False
        assert other.calls == [] and other.on is True
        status = await link.call(tenant, "M1", "getStatus", None, response_timeout=5)
        assert status == MethodResult(200, {"realtime": "off"})
        unknown = await link.call(tenant, "M1", "selfDestruct", None, response_timeout=5)
        assert unknown.status == 501

    async def test_a_failing_handler_is_a_500_answer(self, parts: _Parts, tenant: str) -> None:
        """A device whose handler raises answers 500 with the error; the link goes on."""
        self.needs_connections()
        link = await parts.link()

        async def broken(method: str, payload: Any) -> MethodResult:
            raise RuntimeError("the handler broke")

        await parts.device(link, tenant, "M1", broken)
        result = await link.call(tenant, "M1", "getStatus", None, response_timeout=5)
        assert result.status == 500 and "the handler broke" in str(result.payload)

    async def test_a_silent_machine_is_a_timeout(self, parts: _Parts, tenant: str) -> None:
        """A handler that never answers makes call raise DeviceTimeout after response_timeout."""
        self.needs_connections()
        link = await parts.link()
        never = asyncio.Event()

        async def silent(method: str, payload: Any) -> MethodResult:
            await never.wait()
            return MethodResult(200)

        await parts.device(link, tenant, "M1", silent)
        with pytest.raises(DeviceTimeout):
            await link.call(tenant, "M1", "getStatus", None, response_timeout=0.5)

    async def test_an_absent_machine_is_not_connected(self, parts: _Parts, tenant: str) -> None:
        """A machine never connected raises DeviceNotConnected at once with connect_timeout 0."""
        self.needs_connections()
        link = await parts.link()
        await parts.device(link, tenant, "M1", Realtime())
        with pytest.raises(DeviceNotConnected):
            await link.call(tenant, "M9", "getStatus", None, response_timeout=5)

    async def test_call_waits_connect_timeout_for_the_machine(
        self, parts: _Parts, tenant: str
    ) -> None:
        """With connect_timeout, a call made before the machine connects is answered once it does."""
        self.needs_connections()
        link = await parts.link()
        call = asyncio.create_task(
            link.call(tenant, "M1", "getStatus", None, response_timeout=5, connect_timeout=10)
        )
        await asyncio.sleep(0.3)
        assert not call.done()
        await parts.device(link, tenant, "M1", Realtime())
        assert await call == MethodResult(200, {"realtime": "on"})

    async def test_an_invalid_method_name_is_refused(self, parts: _Parts, tenant: str) -> None:
        """A method name that is not an id (e.g. with a /) is refused before anything is sent."""
        self.needs_connections()
        link = await parts.link()
        handler = Realtime()
        await parts.device(link, tenant, "M1", handler)
        with pytest.raises(DecodeError):
            await link.call(tenant, "M1", "get/Status", None, response_timeout=2)
        assert handler.calls == []

    # -- presence ---------------------------------------------------------------------

    async def test_status_follows_the_device(self, parts: _Parts, tenant: str) -> None:
        """Connected while the device is, not after it closed; a machine never seen is not."""
        self.needs_connections()
        link = await parts.link()
        assert not link.status(tenant, "M1").connected
        device = await parts.device(link, tenant, "M1", Realtime())
        await until(lambda: link.status(tenant, "M1").connected)
        since = link.status(tenant, "M1").since_ms
        assert since is not None and abs(since - time.time() * 1000) < 60_000
        assert not link.status(tenant, "M2").connected
        await device.close()
        await until(lambda: not link.status(tenant, "M1").connected)
        with pytest.raises(DeviceNotConnected):
            await link.call(tenant, "M1", "getStatus", None, response_timeout=2)

    async def test_a_crashed_device_goes_offline(self, parts: _Parts, tenant: str) -> None:
        """A device whose connection ends without a goodbye is soon not connected."""
        self.needs_connections()
        link = await parts.link()
        device = await parts.device(link, tenant, "M1", Realtime())
        await self.crash_device(device)
        await until(lambda: not link.status(tenant, "M1").connected)

    # -- bad input --------------------------------------------------------------------

    async def test_bad_input_is_one_rejection_and_nothing_else_is_lost(
        self, parts: _Parts, tenant: str
    ) -> None:
        """Undecodable payloads each give a Rejection naming the machine; good ones around them arrive."""
        link = await parts.link()
        inbox = parts.inbox(link)
        good_can = encode(can_message(tenant, "M1"))
        await self.send_raw(link, tenant, "M1", "vehicle_can", good_can)
        bad = [
            ("vehicle_can", good_can[:-3], "truncated"),
            ("vehicle_can", encode(raw_message(tenant, "M1")), "JSON"),
            ("client_raw_data", b'{"v": 1, "ts": "soon", "values": {}}', "ts"),
            ("client_raw_data", b"\xff\xfe not json", "JSON"),
            ("client_raw_data", b"x" * (1024 * 1024 + 1), "bytes"),
        ]
        for msg_type, payload, _ in bad:
            await self.send_raw(link, tenant, "M1", msg_type, payload)
        await self.send_raw(
            link, tenant, "M1", "client_raw_data", encode(raw_message(tenant, "M1"))
        )
        first = await inbox.delivery()
        assert first.message == can_message(tenant, "M1")
        for msg_type, _, needle in bad:
            item = await inbox.next()
            assert isinstance(item, Rejection), (msg_type, needle, item)
            assert (item.tenant, item.chassis) == (tenant, "M1")
            assert needle.lower() in item.reason.lower(), (needle, item.reason)
            if item.ack is not None:
                await item.ack()
        last = await inbox.delivery()
        assert last.message == raw_message(tenant, "M1")
        await inbox.nothing()


class _Parts:
    """Links, devices and inboxes of one test, closed afterwards."""

    def __init__(self, contract: DeviceLinkContract) -> None:
        self.contract = contract
        self.links: list[DeviceLink] = []
        self.devices: list[Device] = []
        self.inboxes: list[Inbox] = []

    async def link(self) -> DeviceLink:
        link = await self.contract.make_link()
        self.links.append(link)
        return link

    def inbox(self, link: DeviceLink) -> Inbox:
        inbox = Inbox(link)
        self.inboxes.append(inbox)
        return inbox

    async def device(
        self,
        link: DeviceLink,
        tenant: str,
        chassis: str,
        on_method: MethodHandler | None = None,
    ) -> Device:
        device = await self.contract.make_device(link, tenant, chassis, on_method)
        self.devices.append(device)
        if self.contract.connections:
            await until(lambda: link.status(tenant, chassis).connected)
        return device

    async def close(self) -> None:
        for inbox in self.inboxes:
            await inbox.stop()
        for device in self.devices:
            await device.close()
        for link in self.links:
            await link.close()
