"""The live hub without sockets: subscriptions follow clients, one encoding per field list, bounded queues."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from livedata.bus.base import HISTORY_SECONDS
from livedata.bus.memory import MemoryPubSub
from livedata.gateway.hub import Hub, LiveClient
from livedata.model import Kind, Record
from livedata.pipeline.distribute import live_message


def message(seq: int, **values: float) -> bytes:
    record = Record("t", "c", "vehicle_can", 1_000 * seq, Kind.REALTIME, dict(values))
    return live_message(record, seq, "e1")


class Sink:
    """Collects what a client sends."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def __call__(self, text: str) -> None:
        self.sent.append(orjson.loads(text))


def new_hub() -> tuple[Hub, MemoryPubSub]:
    url = f"memory://{uuid.uuid4().hex}"
    return Hub(MemoryPubSub(url)), MemoryPubSub(url)


async def test_subscribes_only_while_a_client_watches() -> None:
    """The hub subscribes a channel with its first client and unsubscribes after the last."""
    hub, _ = new_hub()
    a, b = LiveClient(Sink()), LiveClient(Sink())
    await hub.watch(a, "ch1", ("x",))
    await hub.watch(b, "ch1", ("y",))
    assert hub.channels == ["ch1"]
    await hub.leave(a)
    assert hub.channels == ["ch1"]
    await hub.leave(b)
    assert hub.channels == []


async def test_clients_get_only_their_fields_and_share_encodings() -> None:
    """Clients with the same field list get the same encoded bytes; others get their own fields."""
    hub, publisher = new_hub()
    a, b, c = LiveClient(Sink()), LiveClient(Sink()), LiveClient(Sink())
    await hub.watch(a, "ch", ("x",))
    await hub.watch(b, "ch", ("x",))
    await hub.watch(c, "ch", ("y", "z"))
    await publisher.publish("ch", message(1, x=1.0, y=2.0, z=3.0, w=4.0))
    assert a.queue[0] is b.queue[0]
    assert orjson.loads(a.queue[0]) == {
        "type": "LIVE_DATA",
        "payload": {"x": 1.0},
        "ts": 1000,
        "seq": 1,
        "epoch": "e1",
    }
    assert orjson.loads(c.queue[0])["payload"] == {"y": 2.0, "z": 3.0}


async def test_changing_fields_moves_the_client() -> None:
    """Watching again with other fields replaces the old field list."""
    hub, publisher = new_hub()
    client = LiveClient(Sink())
    await hub.watch(client, "ch", ("x",))
    await hub.watch(client, "ch", ("y",))
    await publisher.publish("ch", message(1, x=1.0, y=2.0))
    assert [orjson.loads(m)["payload"] for m in client.queue] == [{"y": 2.0}]


async def test_other_channels_are_not_delivered() -> None:
    """A client gets nothing published on another machine's channel."""
    hub, publisher = new_hub()
    client = LiveClient(Sink())
    await hub.watch(client, "machine-a", ("x",))
    await publisher.publish("machine-b", message(1, x=1.0))
    assert not client.queue


async def test_slow_client_keeps_newest_and_is_told_what_it_missed() -> None:
    """A full queue drops the oldest messages; the next one sent carries the missed count."""
    hub, publisher = new_hub()
    sink = Sink()
    client = LiveClient(sink, queue_max=3)
    await hub.watch(client, "ch", ("x",))
    for seq in range(1, 11):
        await publisher.publish("ch", message(seq, x=float(seq)))
    assert len(client.queue) == 3
    writer = asyncio.create_task(client.writer())
    await asyncio.sleep(0.01)
    writer.cancel()
    assert [m["seq"] for m in sink.sent] == [8, 9, 10]
    assert sink.sent[0]["missed"] == 7
    assert "missed" not in sink.sent[1]


async def test_a_stuck_client_does_not_delay_others() -> None:
    """A client whose send never returns does not stop another client's deliveries."""
    hub, publisher = new_hub()
    blocked = asyncio.Event()

    async def stuck(_text: str) -> None:
        await blocked.wait()

    sink = Sink()
    slow, fast = LiveClient(stuck, queue_max=2), LiveClient(sink)
    await hub.watch(slow, "ch", ("x",))
    await hub.watch(fast, "ch", ("x",))
    tasks = [asyncio.create_task(slow.writer()), asyncio.create_task(fast.writer())]
    for seq in range(1, 21):
        await publisher.publish("ch", message(seq, x=1.0))
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    assert [m["seq"] for m in sink.sent] == list(range(1, 21))
    assert len(slow.queue) <= 2


async def test_malformed_bus_message_is_skipped() -> None:
    """A message that is not a live message is dropped, later ones still arrive."""
    hub, publisher = new_hub()
    client = LiveClient(Sink())
    await hub.watch(client, "ch", ("x",))
    await publisher.publish("ch", b"not json")
    await publisher.publish("ch", message(2, x=5.0))
    assert [orjson.loads(m)["seq"] for m in client.queue] == [2]


async def test_listeners_share_the_subscription_with_clients() -> None:
    """In-process listeners get values and head; the channel stays subscribed until both leave."""
    hub, publisher = new_hub()
    got: list[tuple[dict, dict]] = []

    def listener(values: dict, head: dict) -> None:
        got.append((values, head))

    client = LiveClient(Sink())
    await hub.listen("ch", listener)
    await hub.watch(client, "ch", ("x",))
    await publisher.publish("ch", message(3, x=1.0, y=2.0))
    assert got == [({"x": 1.0, "y": 2.0}, {"ts": 3000, "seq": 3, "epoch": "e1"})]
    await hub.leave(client)
    assert hub.channels == ["ch"]
    await hub.unlisten("ch", listener)
    assert hub.channels == []


async def test_reconnecting_client_recovers_exactly_what_it_missed() -> None:
    """With since=(epoch, seq) the client first gets one RECOVERY with the missed messages, in order."""
    hub, publisher = new_hub()
    for seq in range(1, 11):
        await publisher.publish("ch", message(seq, x=float(seq), y=0.0))
    client = LiveClient(Sink())
    await hub.watch(client, "ch", ("x",), since=("e1", 6))
    await publisher.publish("ch", message(11, x=11.0))
    frames = [orjson.loads(m) for m in client.queue]
    assert frames[0]["type"] == "RECOVERY" and frames[0]["recovered"] is True
    assert [(m["seq"], m["payload"]) for m in frames[0]["messages"]] == [
        (seq, {"x": float(seq)}) for seq in range(7, 11)
    ]
    assert [(f["type"], f["seq"]) for f in frames[1:]] == [("LIVE_DATA", 11)]


async def test_recovery_fails_when_the_epoch_changed_or_history_is_gone() -> None:
    """An unknown epoch, or a gap older than the kept history, gives recovered: false."""
    hub, publisher = new_hub()
    for seq in range(50, 55):
        await publisher.publish("ch", message(seq, x=1.0))
    for since in (("other-epoch", 52), ("e1", 10)):
        client = LiveClient(Sink())
        await hub.watch(client, "ch", ("x",), since=since)
        frame = orjson.loads(client.queue[0])
        assert frame == {"type": "RECOVERY", "recovered": False, "epoch": since[0], "messages": []}
        await hub.leave(client)


async def test_a_client_that_makes_no_progress_is_given_up() -> None:
    """A writer whose send never completes raises Stalled after the stall timeout."""
    from livedata.gateway.hub import Stalled

    async def never(_text: str) -> None:
        await asyncio.Event().wait()

    client = LiveClient(never, stall_timeout=0.05)
    client.offer(b'{"type":"LIVE_DATA"}')
    try:
        await asyncio.wait_for(client.writer(), 2)
    except Stalled:
        return
    raise AssertionError("the writer did not give up")


class Clock:
    """A stand-in for the memory bus's ``time`` module: monotonic() is set by the test."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize("rate", [1, 10])
@pytest.mark.parametrize("history", [HISTORY_SECONDS, 20.0])
async def test_drops_recover_exactly_within_the_history_and_not_beyond(
    monkeypatch: pytest.MonkeyPatch, rate: int, history: float
) -> None:
    """Clients away 5 s, 60 s and 5 min (1 and 10 Hz) get every missed seq once, or recovered: false."""
    clock = Clock()
    monkeypatch.setattr("livedata.bus.memory.time", clock)
    hub, publisher = new_hub()
    publisher.history_seconds = hub.pubsub.history_seconds = history
    start, end, step = clock.now, clock.now + 400.0, 1.0 / rate
    seq_at: dict[float, int] = {}
    seq = 0
    while clock.now < end:
        seq += 1
        seq_at[round(clock.now - start, 3)] = seq
        await publisher.publish("ch", message(seq, x=float(seq)))
        clock.now = start + seq * step
    newest = seq
    for drop in (5.0, 60.0, 300.0):
        last_seen = seq_at[round(400.0 - drop, 3)]
        client = LiveClient(Sink(), queue_max=64)
        await hub.watch(client, "ch", ("x",), since=("e1", last_seen))
        for later in (newest + 1, newest + 2):
            await publisher.publish("ch", message(later, x=float(later)))
        frames = [orjson.loads(m) for m in client.queue]
        recovery, live = frames[0], frames[1:]
        assert recovery["type"] == "RECOVERY"
        if drop < history:
            assert recovery["recovered"] is True
            seqs = [m["seq"] for m in recovery["messages"]] + [m["seq"] for m in live]
            assert seqs == list(range(last_seen + 1, newest + 3)), (drop, seqs[:3], seqs[-3:])
            assert len(recovery["messages"]) >= drop * rate - 1
        else:
            assert recovery == {
                "type": "RECOVERY",
                "recovered": False,
                "epoch": "e1",
                "messages": [],
            }
            assert [m["seq"] for m in live] == [newest + 1, newest + 2]
        await hub.leave(client)
        newest += 2
