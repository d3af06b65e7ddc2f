"""Events of every organisation from pub/sub to this gateway's clients.

Alert events and machine status changes are published on one pub/sub channel per
organisation, in the live-channel shape (``{"ts","seq","epoch","values"}``), by
whichever process made them.  Every gateway runs one :class:`OrgRelay` per kind of
event: it listens to the channel of each organisation (the list is re-read every
:data:`ORGS_REFRESH_S`) and hands each event to ``deliver(org, values)``, which
pushes it to that gateway's SSE log tables and Socket.IO rooms.  So an event made
anywhere reaches the pages open on any gateway, and the process that made it
delivers it through the same path (no second, local path).

``deliver`` is an in-process listener of the fan-out core: it is called inline
for each event and must not block (it writes to log-table rings and to the clients'
outboxes).  Under stress there is no queue here: what a slow client cannot take is
dropped by its own outbox (oldest first, ``missed``), as for every live message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from livedata.bus.base import LiveMessage, PubSub
from livedata.errors import BusError

if TYPE_CHECKING:
    from livedata.gateway.fanout import Fanout
    from livedata.metadata import Metadata

log = logging.getLogger("livedata.gateway.relay")

ORGS_REFRESH_S = 5.0

_EPOCH = secrets.token_hex(8)
_SEQ = itertools.count(1)


async def publish_event(
    pubsub: PubSub, channel: str, values: dict[str, Any], ts: int | None = None
) -> None:
    """Publish ``values`` on ``channel`` in the live-channel shape; a bus error is logged."""
    stamp = ts if ts is not None else int(time.time() * 1000)
    try:
        await pubsub.publish(channel, LiveMessage(stamp, next(_SEQ), _EPOCH, values))
    except BusError as exc:
        log.warning("publishing on %s failed: %s", channel, exc)


class OrgRelay:
    """Delivers the events of ``channel(org)`` of every organisation to ``deliver``."""

    def __init__(
        self,
        hub: Fanout,
        meta: Metadata,
        name: str,
        channel: Callable[[str], str],
        deliver: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.hub, self.meta = hub, meta
        self.name = name
        self.channel = channel
        self.deliver = deliver
        self._listening: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def ensure(self, org: str) -> None:
        """Listen to ``org``'s channel (idempotent)."""
        if org in self._listening:
            return
        async with self._lock:
            if org in self._listening:
                return
            listener = self._listener(org)
            await self.hub.listen(self.channel(org), listener)
            self._listening[org] = listener

    def _listener(self, org: str) -> Any:
        def on_message(values: dict[str, Any], head: dict[str, Any]) -> None:
            self.deliver(org, values)

        return on_message

    async def run(self) -> None:
        try:
            while True:
                try:
                    for org in await self.meta.list_orgs():
                        await self.ensure(org.id)
                except Exception as exc:
                    log.warning("%s relay cannot list organisations: %s", self.name, exc)
                await asyncio.sleep(ORGS_REFRESH_S)
        finally:
            for org_id, listener in list(self._listening.items()):
                await self.hub.unlisten(self.channel(org_id), listener)
            self._listening.clear()
