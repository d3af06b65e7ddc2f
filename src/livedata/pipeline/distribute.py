"""The distribute role: records from the log, real-time ones published on their live channel.

Each channel gets a sequence number per message and the distributor's epoch (a
random id chosen at start), so a client can see a gap; a new epoch means the
numbering restarted.  Backfill records are not published (they are stored).
Messages are handed to pub/sub as :class:`~livedata.bus.base.LiveMessage` objects: the
in-process pub/sub passes them on as they are (no JSON round trip in the embedded
shape), Redis encodes them once.  A record read from Kafka still has its values as
the JSON ingest wrote (:attr:`~livedata.model.Record.raw`): its message is those
bytes with the head around them (:meth:`LiveMessage.json_values_template`), the values
never parsed nor encoded again here (that was a third of the role under a flood).
Each batch of the log goes to pub/sub in one ``publish_many`` call (on Redis one
script call per 500 messages, instead of a round trip of four commands per record).

Under stress: pub/sub is fire-and-forget, so a slow gateway never slows the
log.  Redis's pub/sub keeps what it cannot publish in a bounded backlog and sends
it when Redis is back (see :mod:`livedata.bus.redis`); a message a pub/sub still
refuses is skipped (the store has it, and clients fill gaps from history), and
logged once a minute with a count, then once when publishing works again.
"""

from __future__ import annotations

import logging
import uuid

from livedata import observe
from livedata.bus.base import LiveMessage, Log, Message, PubSub
from livedata.errors import BusError
from livedata.model import Kind, Record, live_channel
from livedata.ratelog import Throttled

log = logging.getLogger("livedata.distribute")


def live_message(record: Record, seq: int, epoch: str) -> bytes:
    """What travels on a live channel between processes: the record's values with ts, seq
    and epoch, as JSON."""
    return LiveMessage(record.ts, seq, epoch, record.values).encode()


class Distribute:
    def __init__(self, log: Log, pubsub: PubSub, group: str = "distribute") -> None:
        self.log = log
        self.pubsub = pubsub
        self.group = group
        self.epoch = uuid.uuid4().hex[:12]
        self._json_template = LiveMessage.json_values_template(self.epoch)
        self._seq: dict[str, int] = {}
        self._failures = Throttled(logging.getLogger("livedata.distribute"))

    async def run(self) -> None:
        """Publish real-time records until cancelled, each batch of the log in one call."""
        with observe.log_context(role="distribute"):
            async for batch in self.log.consume(self.group):
                messages = self.messages(batch)
                if messages:
                    await self._publish(messages)

    def messages(self, batch: list[Record]) -> list[tuple[str, Message]]:
        """The live messages of a batch's real-time records, numbered per channel.

        Objects, which the pub/sub encodes only where they leave the process; bytes for
        records whose values are still the log's JSON.
        """
        seqs, epoch, realtime = self._seq, self.epoch, Kind.REALTIME
        template = self._json_template
        out: list[tuple[str, Message]] = []
        append = out.append
        for record in batch:
            if record.kind is not realtime:
                continue
            channel = live_channel(record.tenant, record.chassis, record.msg_type)
            seq = seqs[channel] = seqs.get(channel, 0) + 1
            raw = record.raw
            if raw is None:
                append((channel, LiveMessage(record.ts, seq, epoch, record.values)))
            else:
                append((channel, template % (record.ts, seq, raw)))
        return out

    async def _publish(self, messages: list[tuple[str, Message]]) -> None:
        try:
            await self.pubsub.publish_many(messages)
        except BusError as exc:
            self._failures.failed(
                "publish", "publishing %d live messages failed, skipped: %s", len(messages), exc
            )
            return
        self._failures.recovered("publish", "publishing live messages works again")
        observe.PUBLISHED.inc(len(messages))
