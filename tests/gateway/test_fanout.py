"""The fan-out core without sockets: subscriptions follow clients, one encoding per field
list, one frame per framing, direct writes, a bounded queue only while paused, one stall
clock shared by every outbox of a stall time, recovery from the pub/sub's history."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from livedata.bus.base import HISTORY_SECONDS, LiveMessage
from livedata.bus.memory import MemoryPubSub
from livedata.bus.redis import RedisPubSub
from livedata.gateway.fanout import FLUSH_BATCH, WS_TEXT, Fanout, Head, Outbox
from livedata.gateway.sweep import Sweep
from livedata.model import Kind, Record
from livedata.pipeline.distribute import live_message
from tests.bus.contract import eventually
from tests.servers.redis import RedisServer, start_redis


def message(seq: int, **values: float) -> bytes:
    record = Record("t", "c", "vehicle_can", 1_000 * seq, Kind.REALTIME, dict(values))
    return live_message(record, seq, "e1")


class Sink:
    """A transport's write side in memory: keeps each write and a settable buffer size."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Every WebSocket frame written, parsed by websockets' own frame parser."""
        reader = StreamReader()
        reader.feed_data(b"".join(self.writes))
        reader.feed_eof()
        out = []
        while reader.buffer:
            parser = Frame.parse(reader.read_exact, mask=False)
            try:
                next(parser)
            except StopIteration as done:
                frame = done.value
            assert frame.opcode is Opcode.TEXT and frame.fin
            out.append(orjson.loads(frame.data))
        return out


class Tagged:
    """A framing of another transport: ``<tag>`` + payload + newline."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag

    def frame(self, payload: bytes, head: Head | None) -> bytes:
        return self.tag + payload + b"\n"


def new_fanout() -> tuple[Fanout, MemoryPubSub]:
    url = f"memory://{uuid.uuid4().hex}"
    return Fanout(MemoryPubSub(url)), MemoryPubSub(url)


def outbox(
    sink: Sink | None = None, queue_max: int = 64, stall: float = 30.0, stalls: list | None = None
) -> Outbox:
    return Outbox(
        sink or Sink(),
        WS_TEXT,
        lambda: (stalls if stalls is not None else []).append(1),
        Sweep(stall, Outbox.check_stall),
        queue_max,
    )


async def flushed() -> None:
    """The loop turn ends: the fan-out writes what it gathered (FLUSH_BATCH connections)."""
    await asyncio.sleep(0)


def got(box: Outbox) -> list[dict[str, Any]]:
    assert isinstance(box.sink, Sink)
    return box.sink.messages


async def test_subscribes_only_while_a_client_watches() -> None:
    """The core subscribes a channel with its first client and unsubscribes after the last."""
    fanout, _ = new_fanout()
    a, b = outbox(), outbox()
    await fanout.watch(a, "ch1", ("x",))
    await fanout.watch(b, "ch1", ("y",))
    assert fanout.channels == ["ch1"]
    await fanout.leave(a)
    assert fanout.channels == ["ch1"]
    await fanout.leave(b)
    assert fanout.channels == []


async def test_clients_get_only_their_fields_and_share_frames() -> None:
    """Clients with the same field list get the same frame bytes object; others their own fields."""
    fanout, publisher = new_fanout()
    a, b, c = outbox(), outbox(), outbox()
    await fanout.watch(a, "ch", ("x",))
    await fanout.watch(b, "ch", ("x",))
    await fanout.watch(c, "ch", ("y", "z"))
    await publisher.publish("ch", message(1, x=1.0, y=2.0, z=3.0, w=4.0))
    assert a.sink.writes[0] is b.sink.writes[0]  # type: ignore[attr-defined]
    assert got(a) == [
        {"type": "LIVE_DATA", "payload": {"x": 1.0}, "ts": 1000, "seq": 1, "epoch": "e1"}
    ]
    assert got(c)[0]["payload"] == {"y": 2.0, "z": 3.0}


async def test_each_framing_frames_once_for_its_group() -> None:
    """Another transport's framing gets the same payload in its own frame, shared in its group."""
    fanout, publisher = new_fanout()
    sse = Tagged(b"data: ")
    ws = outbox()
    s1, s2 = (fanout.outbox(Sink(), sse, lambda: None) for _ in range(2))
    for box in (ws, s1, s2):
        await fanout.watch(box, "ch", ("x",))
    await publisher.publish("ch", message(1, x=1.0))
    sent = s1.sink.writes[0]  # type: ignore[attr-defined]
    assert sent is s2.sink.writes[0]  # type: ignore[attr-defined]
    assert sent.startswith(b"data: ") and orjson.loads(sent[6:]) == got(ws)[0]


async def test_in_process_messages_are_not_decoded() -> None:
    """A LiveMessage object on the in-process bus reaches clients and listeners as is."""
    fanout, publisher = new_fanout()
    seen: list[tuple[dict, Head]] = []
    box = outbox()
    await fanout.watch(box, "ch", ("x",))
    await fanout.listen("ch", lambda values, head: seen.append((values, head)))
    live = LiveMessage(5_000, 5, "e1", {"x": 2.5, "y": 1.0})
    await publisher.publish("ch", live)
    assert seen[0][0] is live.values and seen[0][1] is live.head
    assert got(box) == [
        {"type": "LIVE_DATA", "payload": {"x": 2.5}, "ts": 5000, "seq": 5, "epoch": "e1"}
    ]


async def test_changing_fields_moves_the_client() -> None:
    """Watching again with other fields replaces the old field list."""
    fanout, publisher = new_fanout()
    box = outbox()
    await fanout.watch(box, "ch", ("x",))
    await fanout.watch(box, "ch", ("y",))
    await publisher.publish("ch", message(1, x=1.0, y=2.0))
    assert [m["payload"] for m in got(box)] == [{"y": 2.0}]


async def test_other_channels_are_not_delivered() -> None:
    """A client gets nothing published on another machine's channel."""
    fanout, publisher = new_fanout()
    box = outbox()
    await fanout.watch(box, "machine-a", ("x",))
    await publisher.publish("machine-b", message(1, x=1.0))
    assert got(box) == []


async def test_paused_client_keeps_newest_and_is_told_what_it_missed() -> None:
    """While paused a full outbox drops the oldest; on resume one write carries the rest,
    the first with the missed count."""
    fanout, publisher = new_fanout()
    box = outbox(queue_max=3)
    await fanout.watch(box, "ch", ("x",))
    box.pause_writing()
    for seq in range(1, 11):
        await publisher.publish("ch", message(seq, x=float(seq)))
    assert box.queued == 3 and box.sink.writes == []  # type: ignore[attr-defined]
    box.resume_writing()
    assert len(box.sink.writes) == 1  # type: ignore[attr-defined]
    sent = got(box)
    assert [m["seq"] for m in sent] == [8, 9, 10]
    assert sent[0]["missed"] == 7
    assert "missed" not in sent[1]
    await publisher.publish("ch", message(11, x=11.0))
    assert len(box.sink.writes) == 2 and "missed" not in got(box)[-1]  # type: ignore[attr-defined]


async def test_a_paused_client_does_not_delay_others() -> None:
    """A client whose transport is paused does not stop another client's deliveries."""
    fanout, publisher = new_fanout()
    slow, fast = outbox(queue_max=2), outbox()
    await fanout.watch(slow, "ch", ("x",))
    await fanout.watch(fast, "ch", ("x",))
    slow.pause_writing()
    for seq in range(1, 21):
        await publisher.publish("ch", message(seq, x=1.0))
    await asyncio.sleep(0)  # the loop turn ends: its gathered frames are written
    assert [m["seq"] for m in got(fast)] == list(range(1, 21))
    assert slow.queued == 2 and slow.missed == 18
    slow.close()


async def test_malformed_bus_message_is_skipped() -> None:
    """A message that is not a live message is dropped, later ones still arrive."""
    fanout, publisher = new_fanout()
    box = outbox()
    await fanout.watch(box, "ch", ("x",))
    await publisher.publish("ch", b"not json")
    await publisher.publish("ch", b'{"ts":1,"seq":1,"epoch":"e1","values":[1]}')
    await publisher.publish("ch", message(2, x=5.0))
    assert [m["seq"] for m in got(box)] == [2]


async def test_listeners_share_the_subscription_with_clients() -> None:
    """In-process listeners get values and head; the channel stays subscribed until both leave."""
    fanout, publisher = new_fanout()
    seen: list[tuple[dict, dict]] = []

    def listener(values: dict, head: dict) -> None:
        seen.append((values, head))

    box = outbox()
    await fanout.listen("ch", listener)
    await fanout.watch(box, "ch", ("x",))
    await publisher.publish("ch", message(3, x=1.0, y=2.0))
    assert seen == [({"x": 1.0, "y": 2.0}, {"ts": 3000, "seq": 3, "epoch": "e1"})]
    await fanout.leave(box)
    assert fanout.channels == ["ch"]
    await fanout.unlisten("ch", listener)
    assert fanout.channels == []


async def test_reconnecting_client_recovers_exactly_what_it_missed() -> None:
    """With since=(epoch, seq) the client first gets one RECOVERY with the missed messages, in order."""
    fanout, publisher = new_fanout()
    for seq in range(1, 11):
        await publisher.publish("ch", message(seq, x=float(seq), y=0.0))
    box = outbox()
    await fanout.watch(box, "ch", ("x",), since=("e1", 6))
    await publisher.publish("ch", message(11, x=11.0))
    frames = got(box)
    assert frames[0]["type"] == "RECOVERY" and frames[0]["recovered"] is True
    assert [(m["seq"], m["payload"]) for m in frames[0]["messages"]] == [
        (seq, {"x": float(seq)}) for seq in range(7, 11)
    ]
    assert [(f["type"], f["seq"]) for f in frames[1:]] == [("LIVE_DATA", 11)]


async def test_live_messages_during_recovery_are_held_and_not_sent_twice() -> None:
    """Messages that arrive while the history is read follow the RECOVERY, none twice."""
    fanout, publisher = new_fanout()
    for seq in range(1, 6):
        await publisher.publish("ch", message(seq, x=float(seq)))
    box = outbox()
    box.hold()
    await fanout._attach(box, "ch", ("x",))
    await publisher.publish("ch", message(6, x=6.0))  # both in the history and held
    box.release(*await fanout.recovery("ch", ("x",), ("e1", 3)))
    frames = got(box)
    assert [m["seq"] for m in frames[0]["messages"]] == [4, 5, 6]
    assert len(frames) == 1


async def test_recovery_fails_when_the_epoch_changed_or_history_is_gone() -> None:
    """An unknown epoch, or a gap older than the kept history, gives recovered: false."""
    fanout, publisher = new_fanout()
    for seq in range(50, 55):
        await publisher.publish("ch", message(seq, x=1.0))
    for since in (("other-epoch", 52), ("e1", 10)):
        box = outbox()
        await fanout.watch(box, "ch", ("x",), since=since)
        assert got(box)[0] == {
            "type": "RECOVERY",
            "recovered": False,
            "epoch": since[0],
            "messages": [],
        }
        await fanout.leave(box)


async def test_a_client_paused_without_progress_is_given_up() -> None:
    """A transport paused for the stall time with a buffer that never shrinks is given up once."""
    stalls: list[int] = []
    box = outbox(stall=0.02, stalls=stalls)
    box.sink.buffered = 70_000  # type: ignore[attr-defined]
    box.pause_writing()
    box.send(b'{"type":"LIVE_DATA"}')
    for _ in range(100):
        if stalls:
            break
        await asyncio.sleep(0.01)
    assert stalls == [1] and box.closed
    box.send(b'{"type":"LIVE_DATA"}')
    assert box.sink.writes == []  # type: ignore[attr-defined]


async def test_a_slow_but_draining_client_is_not_given_up() -> None:
    """Each stall check that finds the buffer smaller than before arms the clock again."""
    stalls: list[int] = []
    sink = Sink()
    box = outbox(sink, stall=30.0, stalls=stalls)
    sink.buffered = 100_000
    box.pause_writing()
    for _ in range(10):
        sink.buffered -= 5_000
        box.check_stall()
        assert box._armed
    assert stalls == [] and not box.closed
    box.check_stall()  # no progress since the last check
    assert stalls == [1] and box.closed and not box._armed


async def test_an_idle_client_arms_no_timer() -> None:
    """A connection that is not paused has no stall deadline, however long it is idle."""
    box = outbox(stall=0.01)
    box.send(b'{"a":1}')
    assert not box._armed
    await asyncio.sleep(0.03)
    assert not box.closed


class Draining(Sink):
    """A transport whose buffer is smaller each time it is looked at (slow but moving)."""

    def get_write_buffer_size(self) -> int:
        self.buffered -= 100
        return self.buffered


async def test_outboxes_of_the_fanout_share_one_stall_clock() -> None:
    """Outboxes made by Fanout.outbox arm the fan-out's shared stall clock, no timer of
    their own: the stuck one is given up, the draining one armed again, a resumed one
    leaves the clock."""
    fanout = Fanout(MemoryPubSub(f"memory://{uuid.uuid4().hex}"), stall_seconds=0.02)
    stalled: list[str] = []
    stuck, draining, resumed = Sink(), Draining(), Sink()
    boxes = {
        name: fanout.outbox(sink, WS_TEXT, lambda name=name: stalled.append(name))
        for name, sink in (("stuck", stuck), ("draining", draining), ("resumed", resumed))
    }
    for sink in (stuck, draining, resumed):
        sink.buffered = 100_000
    for box in boxes.values():
        box.pause_writing()
        assert box in fanout.stalls
    boxes["resumed"].resume_writing()
    assert boxes["resumed"] not in fanout.stalls
    for _ in range(100):
        if stalled:
            break
        await asyncio.sleep(0.01)
    assert stalled == ["stuck"] and boxes["stuck"].closed
    assert boxes["stuck"] not in fanout.stalls and boxes["draining"] in fanout.stalls
    assert not boxes["draining"].closed and not boxes["resumed"].closed
    boxes["draining"].close()
    assert len(fanout.stalls) == 0


def test_outboxes_of_one_stall_time_share_its_clock_whatever_their_transport() -> None:
    """Outboxes of every framing with the same stall time get the same stall clock (the
    fan-out's default for its own stall time); another stall time gets one of its own."""
    fanout = Fanout(MemoryPubSub(f"memory://{uuid.uuid4().hex}"), stall_seconds=30.0)
    ws = fanout.outbox(Sink(), WS_TEXT, lambda: None)
    sse = fanout.outbox(Sink(), Tagged(b"data: "), lambda: None, queue_max=512, stall_seconds=30.0)
    short = fanout.outbox(Sink(), Tagged(b"42"), lambda: None, stall_seconds=2.0)
    assert ws._stalls is sse._stalls is fanout.stalls is fanout.stall_clock(30.0)
    assert short._stalls is fanout.stall_clock(2.0) and short._stalls.timeout == 2.0
    assert sse.queue_max == 512 and ws.queue_max == fanout.queue_max


def test_websocket_frames_of_every_size_parse() -> None:
    """WS_TEXT makes valid unmasked text frames for 7-bit, 16-bit and 64-bit lengths."""
    sink = Sink()
    payloads = [b'{"a":"%s"}' % (b"x" * n) for n in (0, 100, 1_000, 70_000)]
    for payload in payloads:
        sink.write(WS_TEXT.frame(payload, None))
    assert [len(m["a"]) for m in sink.messages] == [0, 100, 1_000, 70_000]


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
    """Clients away 5 s, 60 s and 5 min (1 and 10 Hz) get every missed seq once, or recovered:
    false followed by what the history still holds."""
    clock = Clock()
    monkeypatch.setattr("livedata.bus.memory.time", clock)
    fanout, publisher = new_fanout()
    publisher.history_seconds = fanout.pubsub.history_seconds = history
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
        box = outbox()
        await fanout.watch(box, "ch", ("x",), since=("e1", last_seen))
        for later in (newest + 1, newest + 2):
            await publisher.publish("ch", message(later, x=float(later)))
        await asyncio.sleep(0)
        frames = got(box)
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
            # then the messages the history still holds (live goes before storage), then live
            seqs = [m["seq"] for m in live]
            assert last_seen + 1 < seqs[0] and seqs == list(range(seqs[0], newest + 3)), drop
            assert len(seqs) - 2 >= history * rate - 1
        await fanout.leave(box)
        newest += 2


async def test_a_burst_in_one_loop_turn_is_written_in_two_writes() -> None:
    """The first frame of a loop turn is written at once, the rest of the turn in one write."""
    fanout, _ = new_fanout()
    box = outbox()
    await fanout.watch(box, "ch", ("x",))
    for seq in range(1, 6):  # no await that yields between them: one loop turn
        fanout._on_message("ch", LiveMessage(seq * 1_000, seq, "e1", {"x": float(seq)}))
    assert len(box.sink.writes) == 1  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    assert len(box.sink.writes) == 2  # type: ignore[attr-defined]
    assert [m["seq"] for m in got(box)] == [1, 2, 3, 4, 5]
    fanout._on_message("ch", LiveMessage(6_000, 6, "e1", {"x": 6.0}))  # a new turn: at once
    assert len(box.sink.writes) == 3  # type: ignore[attr-defined]


def live(seq: int) -> LiveMessage:
    return LiveMessage(seq * 1_000, seq, "e1", {"x": float(seq)})


async def test_a_busy_turn_gathers_and_flushes_oldest_first() -> None:
    """Past FLUSH_BATCH connections written at once in a loop turn the rest gather; they are
    flushed oldest first, FLUSH_BATCH per turn, one write each, and while some wait to be
    flushed new frames gather too (one write per connection per round of the list)."""
    fanout, _ = new_fanout()
    a = [outbox() for _ in range(FLUSH_BATCH)]
    b = [outbox() for _ in range(10)]
    for box in a:
        await fanout.watch(box, "a", ("x",))
    for box in b:
        await fanout.watch(box, "b", ("x",))

    def writes(boxes: list[Outbox]) -> list[int]:
        return [len(box.sink.writes) for box in boxes]  # type: ignore[attr-defined]

    fanout._on_message("a", live(1))  # FLUSH_BATCH connections at once: the turn's share
    fanout._on_message("b", live(1))  # gathered
    fanout._on_message("a", live(2))  # the second frame of a's connections: gathered
    assert writes(a) == [1] * FLUSH_BATCH and writes(b) == [0] * 10
    await flushed()  # the first FLUSH_BATCH of the list: b's 10, then a's
    assert writes(b) == [1] * 10 and sorted(writes(a)) == [1] * 10 + [2] * (FLUSH_BATCH - 10)
    fanout._on_message("b", live(2))  # the round is not over: gathered, not written at once
    assert writes(b) == [1] * 10
    await flushed()
    assert writes(a) == [2] * FLUSH_BATCH and writes(b) == [2] * 10
    assert [m["seq"] for m in got(a[-1])] == [1, 2] and [m["seq"] for m in got(b[0])] == [1, 2]
    fanout._on_message("b", live(3))  # all flushed: at once again
    assert writes(b) == [3] * 10


async def test_what_the_transport_sends_goes_after_gathered_frames() -> None:
    """A message the transport sends itself while frames are gathered goes after them, in
    their write."""
    fanout, _ = new_fanout()
    box = outbox()
    await fanout.watch(box, "ch", ("x",))
    fanout._on_message("ch", live(1))  # at once
    fanout._on_message("ch", live(2))  # gathered
    box.send(b'{"type":"ERROR"}')
    await flushed()
    assert len(box.sink.writes) == 2  # type: ignore[attr-defined]
    assert [m.get("seq") for m in got(box)] == [1, 2, None]


async def test_a_pausing_transport_writes_gathered_frames_before_queueing() -> None:
    """When another write pauses the transport, the frames gathered for it go out first, and
    what comes later queues behind them (nothing overtakes)."""
    fanout, _ = new_fanout()
    box = outbox()
    await fanout.watch(box, "ch", ("x",))
    fanout._on_message("ch", live(1))  # at once
    fanout._on_message("ch", live(2))  # gathered
    box.pause_writing()  # e.g. a keep-alive ping filled the buffer
    fanout._on_message("ch", live(3))
    await flushed()
    assert [m["seq"] for m in got(box)] == [1, 2] and box.queued == 1
    box.resume_writing()
    assert [m["seq"] for m in got(box)] == [1, 2, 3]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` on a free loopback port."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


RedisFanout = tuple[Fanout, RedisPubSub]


@pytest.fixture
async def redis_fanout(redis_server: RedisServer) -> AsyncIterator[RedisFanout]:
    """A fan-out on a Redis pub/sub and a publisher on the same prefix."""
    prefix = f"{uuid.uuid4().hex}/"
    fanout = Fanout(RedisPubSub(f"{redis_server.url}?prefix={prefix}"))
    publisher = RedisPubSub(f"{redis_server.url}?prefix={prefix}")
    await fanout.pubsub.start()
    await publisher.start()
    yield fanout, publisher
    await fanout.pubsub.close()
    await publisher.close()


async def in_one_read(
    fanout: Fanout, publisher: RedisPubSub, messages: list[tuple[str, bytes]]
) -> None:
    """Publish ``messages`` so that the fan-out's pub/sub connection reads them in one go."""
    transport = fanout.pubsub._conn.transport  # type: ignore[attr-defined]
    transport.pause_reading()  # the burst waits in the socket: one read on resume
    await publisher.publish_many(messages)
    await publisher.history("a")  # a round trip: Redis has written the pushes out
    transport.resume_reading()


async def test_a_redis_read_is_one_write_per_client(redis_fanout: RedisFanout) -> None:
    """Messages that came in one read from Redis reach each client in one write, in order; a
    paused client among them still queues, drops the oldest and counts them."""
    fanout, publisher = redis_fanout
    a, b, slow = outbox(), outbox(), outbox(queue_max=2)
    await fanout.watch(a, "a", ("x",))
    await fanout.watch(b, "b", ("x",))
    await fanout.watch(slow, "a", ("x",))
    slow.pause_writing()
    burst = [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]
    await in_one_read(fanout, publisher, [(ch, message(seq, x=1.0)) for ch, seq in burst])
    await eventually(lambda: len(got(a)) == 3 and len(got(b)) == 2)
    assert len(a.sink.writes) == 1 and len(b.sink.writes) == 1  # type: ignore[attr-defined]
    assert [m["seq"] for m in got(a)] == [1, 2, 3]
    assert [m["seq"] for m in got(b)] == [1, 2]
    assert slow.queued == 2 and slow.missed == 1 and slow.sink.writes == []  # type: ignore[attr-defined]
    slow.resume_writing()
    assert [(m["seq"], m.get("missed")) for m in got(slow)] == [(2, 1), (3, None)]
    await publisher.publish("a", message(4, x=1.0))  # alone in its read: written at once
    await eventually(lambda: len(got(a)) == 4)
    assert len(a.sink.writes) == 2  # type: ignore[attr-defined]
    for box in (a, b, slow):
        await fanout.leave(box)


async def test_a_redis_read_whose_last_message_is_malformed_is_still_delivered(
    redis_fanout: RedisFanout,
) -> None:
    """Messages kept for their channel's last message of a read go out, in one write and in
    order, when that last one is malformed; listeners get each valid message in order."""
    fanout, publisher = redis_fanout
    box = outbox()
    heard: list[int] = []
    await fanout.watch(box, "a", ("x",))
    await fanout.listen("a", lambda values, head: heard.append(head["seq"]))
    await in_one_read(
        fanout,
        publisher,
        [("a", message(1, x=1.0)), ("a", message(2, x=2.0)), ("a", b"not a message")],
    )
    await eventually(lambda: len(box.sink.writes) == 1)  # type: ignore[attr-defined]
    assert [(m["seq"], m["payload"]) for m in got(box)] == [(1, {"x": 1.0}), (2, {"x": 2.0})]
    assert heard == [1, 2]
    await fanout.leave(box)
