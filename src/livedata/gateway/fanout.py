"""The fan-out core: pub/sub channels in, pre-framed bytes out to every live transport.

One object (:class:`Fanout`) serves every live consumer of a gateway process: the
live WebSocket, the SSE watch, Socket.IO and in-process listeners (alerts, status,
fleet).  It is sans-I/O apart from the pub/sub subscription: it never creates a
task, a timer or an ``await`` per message; it writes bytes to transports.

API (for transports)
====================

- A transport makes one :class:`Outbox` per connection with :meth:`Fanout.outbox`
  (``fanout.outbox(sink, framing, on_stall, queue_max=..., stall_seconds=...)``; the
  gateway's settings where not given), or ``Outbox(sink, framing, on_stall, stalls,
  queue_max)`` with a stall clock of :meth:`Fanout.stall_clock`.  ``sink`` is anything with ``write(bytes)`` and
  ``get_write_buffer_size()`` (an ``asyncio.Transport``); ``framing`` is a
  :class:`Framing` (:data:`WS_TEXT` for WebSocket text frames); ``on_stall()`` is
  called once when the connection is given up (the transport closes it: 1013 for
  WebSocket).  The transport's protocol forwards its ``pause_writing`` /
  ``resume_writing`` to :meth:`Outbox.pause_writing` / :meth:`Outbox.resume_writing`
  and calls :meth:`Outbox.close` when the connection ends.
- ``await fanout.watch(outbox, channel, fields, since=None)`` delivers the channel's
  LIVE_DATA (only ``fields``) to the outbox, replacing an earlier watch;
  ``since=(epoch, seq)`` first queues one RECOVERY (see *Recovery*).
  ``await fanout.leave(outbox)`` stops it.
- ``outbox.send(payload)`` sends one JSON object of the transport's own (an error,
  a rate-controlled message) through the same policy.
- In-process listeners: ``await fanout.listen(channel, listener)`` /
  ``unlisten``; ``listener(values, head)`` (head: ``ts``, ``seq``, ``epoch``) is
  called inline for each message and must not block.
- :meth:`Fanout.missed_since` and :func:`recovery_payload` give the recovery data
  to a transport that frames it its own way (SSE ``Last-Event-ID``).

A new transport adds a :class:`Framing`: ``frame(payload, head) -> bytes`` turns
one encoded JSON object into the bytes its clients get (an SSE ``data:`` block with
an ``id:``, a Socket.IO packet).  A framing object is a dictionary key: make one
per kind (not one per connection) so connections share their frames.

Per message
===========

The message is decoded once (or not at all: the in-process bus hands over a
:class:`~livedata.bus.base.LiveMessage` object); per distinct field list the
LIVE_DATA payload is encoded once; per framing of that group it is framed once,
and the same bytes object goes to every connection of the group.

Coalescing: a connection is written at once only for its first frame of a loop
turn, and only while the fan-out is not behind; otherwise it gathers its frames (a
list append) and is put in the fan-out's flush list (once, at its first gathered
frame).  One ``call_soon`` per turn (not per message or client) ends the turn: it
writes each listed connection's frames in one write, oldest listed first, at most
:data:`FLUSH_BATCH` connections, and lets the loop poll before the next
:data:`FLUSH_BATCH`.  "Behind" means: this turn already wrote :data:`FLUSH_BATCH`
connections at once, or the flush list still holds connections of an earlier turn.
So at light load every frame goes out where its message is handled, as before,
with no timer and no added wait (a connection's second frame of the same turn goes
out when the turn ends).  Under load the loop reads the pub/sub between flush
batches, so a message is parsed as soon as it arrives and joins what its
connection already gathered: each connection is written once per round of the
list, its write carries every frame since its last one (across any number of
pub/sub reads), and a message waits for its connection's place in the round (about
one round), not for a whole round to end before the pub/sub is read again.  The
further behind the gateway, the more frames per write (each write costs about the
same system call, ~5 µs on loopback), so a starved gateway catches up.  A frame the
transport sends itself (:meth:`Outbox.send`) while frames are gathered goes after
them, in the same write.

The Redis pub/sub parses a whole socket read before it hands over its messages, in
one loop turn, and tells for each whether its channel has another message later in
the same read (:meth:`PubSub.follows <livedata.bus.base.PubSub.follows>`,
``bus/redis_subscriber.py``).  Such a message is parsed (and given to the
listeners) and kept; the channel's last message of the read delivers them all: per
field list and framing the frames are joined into one bytes object that each
connection of the group gets as one frame would be (the loop over a group's
connections runs once per read, not once per message).  The turn's end also delivers what a read kept and did
not deliver (its last message of the channel was malformed or unsubscribed).  A
paused connection takes the messages one by one (its queue, drops and ``missed``
as below).

The outbox policy (every transport)
===================================

- While the transport is writable (its write buffer below the high-water mark,
  ``pause_writing`` not called), a frame is written straight to it (or gathered
  with others for one write, see *Coalescing*): no queue.
- While it is paused, frames wait in the outbox: at most ``queue_max``; when full
  the oldest is dropped and counted, and the next frame sent carries
  ``"missed": n`` (spliced into its JSON object, then framed again for this one
  connection).
- On ``resume_writing`` everything queued goes out in one write (coalesced).
  Frames gathered before the transport paused (see *Coalescing*) are written when
  it pauses, before anything queued: at most one round's frames beyond the mark.
- Stall clock: one per connection, armed when the transport pauses.  When
  it runs out and the transport is still paused with its write buffer no smaller
  than when the clock was armed, the client is given up (``on_stall``); when the
  buffer shrank (slow but moving) the clock is armed again.  The clock is a deadline
  in a :class:`~livedata.gateway.sweep.Sweep` that every outbox of the same stall
  time shares, whatever its transport (:meth:`Fanout.stall_clock`: the live
  WebSocket, the SSE watch and Socket.IO have one with the default settings): one
  loop timer for all, up to 1 s late, so a transport that pauses and resumes often
  costs no timer.  Under stress a stuck client therefore costs its transport buffer
  (about the high-water mark), at most ``queue_max`` shared frames, and is dropped
  after ``stall_seconds``.

Recovery
========

A client that reconnects with the ``epoch`` and ``seq`` it saw last gets one
``RECOVERY`` message holding, in order, exactly the LIVE_DATA it missed
(``recovered: true``), then live data again; when they are no longer in the
channel's history (older than it, or another epoch), ``recovered: false`` and it
fills the gap from the history API.  The history is the pub/sub's
(``PubSub.history_seconds``: the ``live_history_seconds`` setting), shared by all
gateways, so recovery works across gateways.  While the history is read, live
messages for that client are held and the ones the recovery already holds are
not sent twice.

Live before storage: a record goes out live before the store has it, so one sent
before a client subscribed can reach the store only after the client read its
history: neither path would carry it.  So a client that joins with history
(``recovered: false``) gets, right after the RECOVERY, every message the channel's
history still holds (:meth:`Fanout.retained`) as LIVE_DATA, oldest first, then
live data; it merges them with what it read from the store (by ``ts``).  They go
through the outbox like any message: when the client cannot take them all, the oldest
(stored long ago) are dropped first and the newest kept.  The
transports that read the store themselves (SSE, Socket.IO) take the same
messages from :meth:`Fanout.retained` / :meth:`Fanout.missed_since`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Protocol

import orjson

from livedata import observe
from livedata.bus.base import Message, PubSub, as_live
from livedata.errors import BusError
from livedata.gateway.sweep import Sweep

__all__ = [
    "WS_TEXT",
    "Fanout",
    "Fields",
    "Framing",
    "Head",
    "Listener",
    "Outbox",
    "Sink",
    "WebSocketText",
    "recovery_payload",
    "with_missed",
]

log = logging.getLogger("livedata.gateway.fanout")

FLUSH_BATCH = 256
"""Connections one flush writes before the loop polls again (see *Coalescing*): about
1.5 ms of system calls on loopback, so under load the pub/sub is read, and other
connections and timers are served, every couple of milliseconds."""

Fields = tuple[str, ...]
Head = dict[str, Any]
"""``{"ts": int, "seq": int, "epoch": str}`` of one channel message (shared, do not change)."""
Listener = Callable[[dict[str, Any], Head], None]
"""An in-process consumer of a channel: called with (values, head); must not block."""


class Framing(Hashable, Protocol):
    """How one transport puts an encoded JSON object on the wire."""

    def frame(self, payload: bytes, head: Head | None) -> bytes:
        """The bytes a client of this transport gets for ``payload`` (``head`` is None for
        messages that are not channel messages: errors, recovery, rate-controlled)."""
        ...


class WebSocketText:
    """A server (unmasked) WebSocket text frame: the same bytes suit every client."""

    __slots__ = ()

    def frame(self, payload: bytes, head: Head | None = None) -> bytes:
        size = len(payload)
        if size < 126:
            return bytes((0x81, size)) + payload
        if size < 65536:
            return struct.pack("!BBH", 0x81, 126, size) + payload
        return struct.pack("!BBQ", 0x81, 127, size) + payload


WS_TEXT = WebSocketText()


class Sink(Protocol):
    """Where an outbox writes: an ``asyncio.Transport`` or anything like it."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...


def with_missed(payload: bytes, missed: int) -> bytes:
    """``payload`` (a JSON object) with ``"missed": missed`` added."""
    return payload[:-1] + b',"missed":%d}' % missed


class Outbox:
    """One connection's way out: direct writes, a bounded queue while paused, one stall clock.

    See the module doc for the policy.  ``delivered`` counts frames written,
    ``missed`` frames dropped since the last one written.
    """

    __slots__ = (
        "_armed_size",
        "_held",
        "_queue",
        "_stalls",
        "channel",
        "closed",
        "direct",
        "fields",
        "framing",
        "missed",
        "on_stall",
        "paused",
        "pending",
        "queue_max",
        "sink",
        "turn",
        "write",
    )

    def __init__(
        self,
        sink: Sink,
        framing: Framing,
        on_stall: Callable[[], None],
        stalls: Sweep,
        queue_max: int = 64,
    ) -> None:
        """``stalls``: the shared stall clock (:meth:`Fanout.stall_clock`; its timeout is
        the stall time)."""
        self.sink = sink
        self.framing = framing
        self.on_stall = on_stall
        self.queue_max = queue_max
        self.paused = False
        self.closed = False
        self.missed = 0
        self.direct = True
        """Frames may go straight to the sink (not paused, nothing queued or held, open)."""
        self.write = sink.write
        self.turn = -1
        """The fan-out's loop turn of this outbox's last write at once (see *Coalescing*)."""
        self.pending: list[bytes] | None = None
        """Frames the fan-out gathered for this connection, written together when it flushes
        it (see *Coalescing*); not None exactly while the fan-out has it to flush."""
        self.channel: str | None = None
        self.fields: Fields | None = None
        self._queue: deque[tuple[bytes, bytes | None, Head | None]] | None = None
        self._held: list[tuple[bytes, bytes | None, Head | None]] | None = None
        self._stalls = stalls
        self._armed_size = 0

    @property
    def stall_seconds(self) -> float:
        """Seconds the transport may stay paused without progress (its stall clock's)."""
        return self._stalls.timeout

    @property
    def queued(self) -> int:
        """Frames waiting for the transport to resume."""
        return len(self._queue) if self._queue else 0

    def send(self, payload: bytes, head: Head | None = None) -> None:
        """Send one encoded JSON object, framed for this connection."""
        self.offer(payload, None, head)

    def offer(self, payload: bytes, wire: bytes | None, head: Head | None) -> bool:
        """Write ``wire`` (``payload`` framed, or None to frame it here) or queue it.

        Returns True when it was written now.
        """
        if self.direct:
            self._put(wire if wire is not None else self.framing.frame(payload, head))
            return True
        if self.closed:
            return False
        if self._held is not None:
            self._held.append((payload, wire, head))
            return False
        if not self.paused and not self._queue:
            if self.missed:
                wire = self.framing.frame(with_missed(payload, self.missed), head)
                self.missed = 0
            elif wire is None:
                wire = self.framing.frame(payload, head)
            self._put(wire)
            self._refresh()
            return True
        if wire is None:
            payload = bytes(memoryview(payload))  # exact size (see Fanout._on_message)
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self.queue_max:
            queue.popleft()
            self.missed += 1
            observe.DROPS.inc()
        queue.append((payload, wire, head))
        return False

    def _put(self, wire: bytes) -> None:
        """Write ``wire``, or put it after the gathered frames when there are some."""
        if self.pending is None:
            self.write(wire)
        else:
            self.pending.append(wire)

    def _refresh(self) -> None:
        self.direct = not (
            self.paused or self.closed or self._held is not None or self._queue or self.missed
        )

    def pause_writing(self) -> None:
        """The transport's buffer is above its high-water mark: queue from now on (what
        was gathered goes first, so that nothing queued overtakes it)."""
        self.paused = True
        self.direct = False
        if self.pending:
            pending, self.pending = self.pending, []
            self.write(b"".join(pending))
        if not self.closed and not self._armed:
            self._arm()

    def resume_writing(self) -> None:
        """The transport drained: write everything queued in one write."""
        self.paused = False
        self._disarm()
        self._drain()
        self._refresh()

    def hold(self) -> None:
        """Keep channel messages aside (while a recovery is read) instead of sending them."""
        self._held = []
        self.direct = False

    def release(
        self, first: bytes, after_seq: int, then: list[tuple[bytes, Head]] | None = None
    ) -> None:
        """Send ``first`` (never dropped; what was queued before goes), then the channel
        messages ``then`` ((payload, head), oldest first), then the held channel messages
        newer than ``after_seq``."""
        held, self._held = self._held or [], None
        if self._queue:
            self._queue.clear()
        self._refresh()
        if self.paused:
            self._queue = deque([(first, None, None)])
        else:
            self.offer(first, None, None)
        for message, position in then or ():
            self.offer(message, None, position)
        for payload, wire, head in held:
            if head is None or head["seq"] > after_seq:
                self.offer(payload, wire, head)

    def close(self) -> None:
        """The connection ends: nothing more is written, the stall clock stops."""
        self.closed = True
        self.direct = False
        self._disarm()
        self._queue = None
        self._held = None

    def _drain(self) -> None:
        queue = self._queue
        if not queue or self.closed:
            return
        self._queue = None
        frame = self.framing.frame
        parts = []
        for payload, wire, head in queue:
            if self.missed:
                wire = frame(with_missed(payload, self.missed), head)
                self.missed = 0
            elif wire is None:
                wire = frame(payload, head)
            parts.append(wire)
        self.write(b"".join(parts))
        observe.DELIVERIES.inc(len(parts))

    @property
    def _armed(self) -> bool:
        return self in self._stalls

    def _arm(self) -> None:
        self._armed_size = self.sink.get_write_buffer_size()
        self._stalls.start(self, asyncio.get_running_loop())

    def _disarm(self) -> None:
        self._stalls.stop(self)

    def check_stall(self) -> None:
        """The stall clock ran out: give the client up, or arm again if its buffer shrank."""
        self._disarm()
        if not self.paused or self.closed:
            return
        if self.sink.get_write_buffer_size() < self._armed_size:
            self._arm()  # slow, but it moves
            return
        observe.STALLED.inc()
        self.close()
        self.on_stall()


class Fanout:
    """Channels of a pub/sub to outboxes and listeners; see the module doc."""

    def __init__(self, pubsub: PubSub, stall_seconds: float = 30.0, queue_max: int = 64) -> None:
        self.pubsub = pubsub
        self.stall_seconds = stall_seconds
        """Seconds a paused transport may make no progress before its client is given up."""
        self.queue_max = queue_max
        """Frames an outbox holds while its transport is paused (the ``client_queue`` setting)."""
        self._stall_clocks: dict[float, Sweep] = {}
        self.stalls = self.stall_clock(stall_seconds)
        """The stall clock of ``stall_seconds`` (one loop timer for all its outboxes)."""
        self._channels: dict[str, dict[Fields, dict[Framing, set[Outbox]]]] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._lock = asyncio.Lock()
        self._turn = 0
        self._turn_open = False
        self._budget = FLUSH_BATCH
        """Connections this loop turn may still write at once (none while the flush list
        has connections left from an earlier turn: see *Coalescing*)."""
        self._dirty: deque[Outbox] = deque()
        """Outboxes with gathered frames, in the order they got their first (see *Coalescing*)."""
        self._written = 0
        """Frames delivered in this loop turn (counted at its end)."""
        self._follows = pubsub.follows
        self._batches: dict[str, list[tuple[dict[str, Any], Head]]] = {}
        """Per channel: the messages of the current pub/sub read kept for its last one."""

    def outbox(
        self,
        sink: Sink,
        framing: Framing,
        on_stall: Callable[[], None],
        queue_max: int = 0,
        stall_seconds: float = 0.0,
    ) -> Outbox:
        """An outbox with this gateway's queue size and stall time (or ``queue_max``,
        ``stall_seconds``), on the shared stall clock of that time."""
        stalls = self.stall_clock(stall_seconds or self.stall_seconds)
        return Outbox(sink, framing, on_stall, stalls, queue_max or self.queue_max)

    def stall_clock(self, seconds: float) -> Sweep:
        """The stall clock every outbox of a ``seconds`` stall time shares, whatever its
        transport: one :class:`~livedata.gateway.sweep.Sweep` (one loop timer) per stall
        time, made on first use."""
        clock = self._stall_clocks.get(seconds)
        if clock is None:
            clock = self._stall_clocks[seconds] = Sweep(seconds, Outbox.check_stall)
        return clock

    @property
    def channels(self) -> list[str]:
        return sorted(set(self._channels) | set(self._listeners))

    async def _need(self, channel: str) -> None:
        if channel not in self._channels and channel not in self._listeners:
            await self.pubsub.subscribe(channel, self._on_message)

    async def _release(self, channel: str) -> None:
        if channel not in self._channels and channel not in self._listeners:
            await self.pubsub.unsubscribe(channel)
        observe.CHANNELS.set(len(self.channels))

    async def listen(self, channel: str, listener: Listener) -> None:
        """Call ``listener`` (which must not block) for each message on ``channel``."""
        async with self._lock:
            await self._need(channel)
            self._listeners.setdefault(channel, []).append(listener)
            observe.CHANNELS.set(len(self.channels))

    async def unlisten(self, channel: str, listener: Listener) -> None:
        async with self._lock:
            listeners = self._listeners.get(channel, [])
            if listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[channel]
                    await self._release(channel)

    async def watch(
        self,
        outbox: Outbox,
        channel: str,
        fields: Fields,
        since: tuple[str, int] | None = None,
    ) -> None:
        """Deliver ``channel``'s messages to ``outbox``, picking ``fields``; replaces earlier ones.

        With ``since`` = (epoch, seq), first recover what the client missed after it; when
        that cannot be done, the channel's retained messages follow the RECOVERY (see
        *Live before storage*).
        """
        if since is not None:
            outbox.hold()
        await self._attach(outbox, channel, fields)
        if since is not None:
            outbox.release(*await self.recovery(channel, fields, since))

    async def retained(self, channel: str) -> list[tuple[dict[str, Any], Head]]:
        """[(values, head)…]: the messages the pub/sub's history holds for ``channel``
        (the last ``live_history_seconds``), oldest first; none when it cannot be read."""
        try:
            history = await self.pubsub.history(channel)
        except BusError as exc:
            log.warning("no history of %s: %s", channel, exc)
            return []
        return [parsed for parsed in map(_parse, history) if parsed is not None]

    async def missed_since(
        self, channel: str, since: tuple[str, int]
    ) -> tuple[bool, list[tuple[dict[str, Any], Head]]]:
        """(recovered, [(values, head)…]): the channel's messages after ``since`` = (epoch,
        seq) from the pub/sub's history, oldest first; when they are not all there any
        more, recovered is False and the list holds every retained message (what a client
        that reads the store to fill its gap must merge: see *Live before storage*)."""
        epoch, last = since
        retained = await self.retained(channel)
        same = [m for m in retained if m[1]["epoch"] == epoch]
        recovered = bool(same) and same[0][1]["seq"] <= last + 1
        observe.RECOVERIES.labels("yes" if recovered else "no").inc()
        if not recovered:
            return False, retained
        return True, [m for m in same if m[1]["seq"] > last]

    async def recovery(
        self, channel: str, fields: Fields, since: tuple[str, int]
    ) -> tuple[bytes, int, list[tuple[bytes, Head]]]:
        """For :meth:`Outbox.release`: the RECOVERY payload for ``since``, the seq after
        which live messages are new, and the LIVE_DATA to send between them (when not
        recovered: the retained messages, see *Live before storage*)."""
        recovered, missed = await self.missed_since(channel, since)
        if recovered:
            newest = missed[-1][1]["seq"] if missed else since[1]
            return recovery_payload(True, since[0], missed, fields), newest, []
        retained = [(_live_data(values, fields, _tail(head)), head) for values, head in missed]
        newest = missed[-1][1]["seq"] if missed else -1
        return recovery_payload(False, since[0], [], fields), newest, retained

    async def _attach(self, outbox: Outbox, channel: str, fields: Fields) -> None:
        async with self._lock:
            self._detach(outbox)
            groups = self._channels.get(channel)
            if groups is None:
                await self._need(channel)
                groups = self._channels[channel] = {}
                observe.CHANNELS.set(len(self.channels))
            groups.setdefault(fields, {}).setdefault(outbox.framing, set()).add(outbox)
            outbox.channel, outbox.fields = channel, fields

    async def leave(self, outbox: Outbox) -> None:
        """Stop delivering to ``outbox``; unsubscribes a channel nobody watches any more."""
        async with self._lock:
            channel = self._detach(outbox)
            if channel is not None and not self._channels[channel]:
                del self._channels[channel]
                await self._release(channel)

    def _detach(self, outbox: Outbox) -> str | None:
        channel, fields = outbox.channel, outbox.fields
        if channel is None or fields is None:
            return None
        groups = self._channels[channel]
        framings = groups[fields]
        members = framings[outbox.framing]
        members.discard(outbox)
        if not members:
            del framings[outbox.framing]
            if not framings:
                del groups[fields]
        outbox.channel = outbox.fields = None
        return channel

    def _on_message(self, channel: str, data: Message) -> None:
        groups = self._channels.get(channel)
        listeners = self._listeners.get(channel)
        if not groups and not listeners:
            return
        parsed = _parse(data)
        if parsed is None:
            log.warning("dropping a malformed message on %s", channel)
            if groups and channel in self._batches and not self._follows():
                self._deliver(channel, self._batches.pop(channel))
            return
        values, head = parsed
        for listener in listeners or ():
            try:
                listener(values, head)
            except Exception:
                log.exception("a listener of %s failed", channel)
        if not groups:
            return
        if not self._turn_open:
            self._turn_open = True
            asyncio.get_running_loop().call_soon(self._end_turn)
        batch = self._batches.get(channel)
        if self._follows():  # the read has more of this channel: all together with its last
            if batch is None:
                self._batches[channel] = [parsed]
            else:
                batch.append(parsed)
        elif batch is None:
            self._deliver(channel, [parsed])
        else:
            del self._batches[channel]
            batch.append(parsed)
            self._deliver(channel, batch)

    def _deliver(self, channel: str, batch: list[tuple[dict[str, Any], Head]]) -> None:
        """The messages of ``channel`` from one pub/sub read, oldest first: framed once per
        group as one bytes object that each writable client gets in one write or gathers
        (see *Coalescing*)."""
        groups = self._channels.get(channel)
        if not groups:
            return
        dirty = self._dirty
        turn = self._turn
        budget = self._budget
        written = 0
        count = len(batch)
        heads = [head for _, head in batch]
        tails = [_tail(head) for head in heads]
        for fields, framings in groups.items():
            payloads = [
                _live_data(values, fields, tail)
                for (values, _), tail in zip(batch, tails, strict=True)
            ]
            for framing, members in framings.items():
                wires = [
                    framing.frame(payload, head)
                    for payload, head in zip(payloads, heads, strict=True)
                ]
                joined = wires[0] if count == 1 else b"".join(wires)
                for outbox in members:
                    if not outbox.direct:
                        for payload, wire, head in zip(payloads, wires, heads, strict=True):
                            written += outbox.offer(payload, wire, head)
                        continue
                    pending = outbox.pending
                    if pending is not None:
                        pending.append(joined)
                    elif budget and outbox.turn != turn:  # its first write this turn: now
                        budget -= 1
                        outbox.turn = turn
                        outbox.write(joined)
                    else:
                        outbox.pending = [joined]
                        dirty.append(outbox)
                    written += count
        self._budget = budget
        self._written += written

    def _end_turn(self) -> None:
        """The loop turn that delivered messages is over: write what each outbox gathered,
        one write per connection (oldest gathered first, at most :data:`FLUSH_BATCH`
        connections, the rest after the loop's next poll), and count the deliveries (one
        metric update per turn, not per message)."""
        self._turn += 1
        self._turn_open = False
        if self._batches:  # a read whose last message of a channel never came
            batches, self._batches = self._batches, {}
            for channel, batch in batches.items():
                self._deliver(channel, batch)
        if self._written:
            observe.DELIVERIES.inc(self._written)
            self._written = 0
        dirty = self._dirty
        take = dirty.popleft
        for _ in range(min(len(dirty), FLUSH_BATCH)):
            outbox = take()
            pending, outbox.pending = outbox.pending, None
            if pending and not outbox.closed:
                outbox.write(pending[0] if len(pending) == 1 else b"".join(pending))
        if dirty:  # the rest after the loop's next poll; what comes meanwhile gathers
            self._budget = 0
            self._turn_open = True
            asyncio.get_running_loop().call_soon(self._end_turn)
        else:
            self._budget = FLUSH_BATCH


_LIVE_DATA = b'{"type":"LIVE_DATA","payload":'


def recovery_payload(
    recovered: bool, epoch: str, missed: list[tuple[dict[str, Any], Head]], fields: Fields
) -> bytes:
    """The RECOVERY message: the missed messages as LIVE_DATA of ``fields``, in order."""
    return orjson.dumps(
        {
            "type": "RECOVERY",
            "recovered": recovered,
            "epoch": epoch,
            "messages": [
                {"type": "LIVE_DATA", "payload": _pick(values, fields), **head}
                for values, head in missed
            ],
        }
    )


def _tail(head: Head) -> bytes:
    """The end of every LIVE_DATA message of one channel message: ``,"ts":…,"seq":…}``."""
    return b"," + orjson.dumps(head)[1:]


def _live_data(values: dict[str, Any], fields: Fields, tail: bytes) -> bytes:
    """The LIVE_DATA message of ``fields`` of one channel message (``tail``: :func:`_tail`).

    ``{"type":"LIVE_DATA","payload":{…},"ts":…,"seq":…,"epoch":…}`` by concatenation: no
    dict per group, and exact-size bytes (orjson's own output holds ~4 KiB whatever its
    length, and a paused outbox keeps up to queue_max of these)."""
    return _LIVE_DATA + orjson.dumps(_pick(values, fields)) + tail


def _parse(data: Message) -> tuple[dict[str, Any], Head] | None:
    """(values, head) of a channel message, or None when it is not one."""
    try:
        live = as_live(data)
    except ValueError:
        return None
    return live.values, live.head


def _pick(values: dict[str, Any], fields: Fields) -> dict[str, Any]:
    return {name: values[name] for name in fields if name in values}
