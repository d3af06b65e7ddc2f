"""Log and pub/sub interfaces; contracts in ``tests/bus/contract.py``.

* The **log** carries every record from ingest to distribute, in order per
  machine (records are keyed by chassis).  Consumers in the same group share the
  records; each record goes to one of them.  ``append`` waits (backpressure)
  when the log is full rather than dropping.
* **Pub/sub** is fire-and-forget fan-out of encoded live messages on a channel.
  A message published while nobody is subscribed is gone; that is fine, because
  the store has every record and the page fills gaps from history.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson

from livedata.model import Record

HISTORY_SECONDS = 180
"""How long a channel's messages stay available for recovery after a reconnect, by default
(``PubSub.history_seconds``; the ``live_history_seconds`` setting)."""
HISTORY_MAX = 5_000
"""At most this many messages per channel are kept (180 s at 10 Hz is 1,800)."""


class LiveMessage:
    """A live channel message as objects: what the in-process bus carries instead of JSON.

    Its wire form (:meth:`encode`) is ``{"ts","seq","epoch","values"}``; a pub/sub
    that crosses a process boundary encodes it there, the in-process one hands the
    object itself to its subscribers and keeps it as history (no JSON round trip).
    ``head`` (``ts``, ``seq``, ``epoch``) is made once and shared by every consumer:
    nobody may change it or ``values``.
    """

    __slots__ = ("head", "values")

    def __init__(self, ts: int, seq: int, epoch: str, values: dict[str, Any]) -> None:
        self.head: dict[str, Any] = {"ts": ts, "seq": seq, "epoch": epoch}
        self.values = values

    @classmethod
    def of(cls, values: dict[str, Any], head: dict[str, Any]) -> LiveMessage:
        """The message with this ``values`` and ``head`` (shared, not copied)."""
        message = cls.__new__(cls)
        message.values, message.head = values, head
        return message

    def encode(self) -> bytes:
        """The JSON form on the wire and in a shared history."""
        return orjson.dumps({**self.head, "values": self.values})

    @staticmethod
    def json_values_template(epoch: str) -> bytes:
        """The wire form of a message of ``epoch`` whose ``values`` are already a JSON object
        (a record's as the log carries them, :attr:`~livedata.model.Record.raw`), as a
        template: ``template % (ts, seq, values)`` is the bytes :meth:`encode` makes of them
        parsed, without parsing and encoding them again (and the epoch written once, not
        per message).  ``epoch`` must need no JSON escaping (the distributors' are hex)."""
        return b'{"ts":%%d,"seq":%%d,"epoch":"%s","values":%%s}' % epoch.encode()


Message = bytes | LiveMessage
"""What a channel carries: encoded JSON, or a :class:`LiveMessage` in process."""


def encoded(message: Message) -> bytes:
    """``message`` as bytes (for a pub/sub that leaves the process)."""
    return message.encode() if isinstance(message, LiveMessage) else message


def as_live(message: Message) -> LiveMessage:
    """``message`` as a :class:`LiveMessage`; raises ``ValueError`` when it is not one."""
    if isinstance(message, LiveMessage):
        return message
    try:
        data = orjson.loads(message)
        live = LiveMessage(data["ts"], data["seq"], data["epoch"], data["values"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a live message: {exc}") from None
    if not isinstance(live.values, dict):
        raise ValueError("not a live message: values is not an object")
    return live


Handler = Callable[[str, Message], None]
"""Called on the event loop with (channel, message); must not block."""


class Log(abc.ABC):
    """The durable hand-off between ingest and distribute."""

    batch_ms: float = 0.0
    """How long ingest's appender lets records gather before an :meth:`append` (unless its
    ``batch_max`` already wait): for a log whose append has a fixed cost of its own (a
    Kafka produce request costs about 0.3 ms of CPU however few records it holds)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush what was appended and disconnect."""

    @abc.abstractmethod
    async def append(self, records: Sequence[Record]) -> None:
        """Append ``records`` (keyed by chassis); returns once the log has accepted them."""

    @abc.abstractmethod
    def consume(self, group: str) -> AsyncIterator[list[Record]]:
        """Batches of records for consumer ``group``, in order per chassis, until closed.

        A batch counts as processed when the next one is asked for (at-least-once).  A log
        that crosses a process boundary hands out records whose values are still the JSON
        they travelled in (:attr:`~livedata.model.Record.raw`), parsed on their first read.
        """


class PubSub(abc.ABC):
    """Live fan-out of encoded messages by channel name."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.history_seconds: float = HISTORY_SECONDS
        """How long :meth:`history` keeps a channel's messages (set before publishing)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect; subscriptions end."""

    async def publish(self, channel: str, message: Message) -> None:
        """Send ``message`` to the current subscribers of ``channel``."""
        await self.publish_many([(channel, message)])

    @abc.abstractmethod
    async def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        """Send each ``(channel, message)`` as :meth:`publish` would, in this order.

        A :class:`LiveMessage` is encoded where the message leaves the process (its
        subscribers in other processes get bytes); in process it may stay an object.

        One call is one batch for the backend (one round trip where it has a network),
        so a batch costs far less than as many :meth:`publish` calls.
        """

    @abc.abstractmethod
    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler`` for each message on ``channel`` until :meth:`unsubscribe`.

        One handler per channel per PubSub object: the gateway's fan-out core multiplexes.
        """

    def follows(self) -> bool:
        """Called by a handler while it runs: whether another message of the same channel
        follows in the batch being delivered (one read from the network), so the handler
        may gather this one and write both together.  False where there are no batches."""
        return False

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; unknown channels are ignored."""

    @abc.abstractmethod
    async def history(self, channel: str) -> list[Message]:
        """The messages published on ``channel`` in the last ``history_seconds`` at least
        (bounded by ``HISTORY_MAX`` messages), oldest first: what a reconnecting client
        may have missed.  Kept whether or not anybody is subscribed."""
