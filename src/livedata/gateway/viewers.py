"""The asyncio driver of :mod:`livedata.follow`: who watches which machine, and the
commands that follow from it.

The viewer hooks are synchronous one-liners, called where a viewer of a machine
comes and goes (``Gateway.viewers.joined(org, chassis)`` / ``Gateway.viewers.left(org,
chassis)``; :meth:`ViewerFollower.watching` around a connection's life):

* the live WebSocket (:class:`~livedata.gateway.live.LiveEndpoint`: from its acceptance
  to the end of the connection);
* each machine channel of an SSE watch stream (:meth:`livedata.gateway.watch.WatchService.stream`);
* each Socket.IO device subscription (``subscribe``, ``unsubscribe`` and disconnect
  in :mod:`livedata.gateway.sio`).

A manual ``startMs``/``endMs`` that the machine accepted (:func:`invoke_method
<livedata.gateway.commands.invoke_method>`) is passed on with :meth:`ViewerFollower.manual`.

:meth:`ViewerFollower.run` (a supervised task of the gateway role) loads each
organisation's setting (``followViewers``, ``viewerGraceSeconds``; again when older
than ``config_ttl`` seconds and at once after a change through the API), runs the
policy's clock and sends its commands through the same path as a user's
(:func:`livedata.gateway.commands.send_command`: command log with reason
``viewers``, status push).  Before a start the machine's real-time state is looked
up (asked with ``getStatus`` when unknown): a stream that already runs is left to
whoever started it, not stopped when the viewers go.  A machine that is not connected is not sent anything (and
nothing is logged): the policy tries again while it is watched.  Commands to one
machine go out in order, one at a time; different machines do not wait for each other.

Scope: viewers are counted per gateway process.  With several gateways, a machine
watched only through another gateway is stopped by this one's timer only if this
one started it (its own viewers left), and another gateway's viewer starts it again
when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from livedata.errors import LivedataError
from livedata.follow import START, STOP, Command, FollowPolicy, OrgConfig
from livedata.gateway.commands import send_command

if TYPE_CHECKING:
    from livedata.catalog import Catalog
    from livedata.devices.base import DeviceLink
    from livedata.gateway.commands import StatusService
    from livedata.metadata import Metadata

log = logging.getLogger("livedata.gateway.viewers")

REASON = "viewers"
WHO = "livedata"
RESPONSE_TIMEOUT_S = 10.0
CONFIG_TTL_S = 30.0


class ViewerFollower:
    """Counts viewers into a :class:`FollowPolicy` and carries out its commands."""

    def __init__(
        self,
        meta: Metadata,
        catalog: Catalog,
        devices: DeviceLink,
        status: StatusService,
        policy: FollowPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        config_ttl: float = CONFIG_TTL_S,
    ) -> None:
        self.meta, self.catalog, self.devices, self.status = meta, catalog, devices, status
        self.policy = policy or FollowPolicy()
        self.clock = clock
        self.config_ttl = config_ttl
        self._outbox: list[Command] = []
        self._loaded: dict[str, float] = {}
        self._to_load: set[str] = set()
        self._wake = asyncio.Event()
        self._chains: dict[tuple[str, str], asyncio.Task[None]] = {}

    # hooks (synchronous, cheap) -------------------------------------------------

    def joined(self, org: str, chassis: str) -> None:
        """A viewer opened ``chassis`` of ``org``."""
        self._queue(self.policy.joined(org, chassis, self._now(org)))

    def left(self, org: str, chassis: str) -> None:
        """A viewer of ``chassis`` went away (call once per :meth:`joined`)."""
        self._queue(self.policy.left(org, chassis, self._now(org)))

    @contextlib.asynccontextmanager
    async def watching(self, org: str, chassis: str) -> AsyncIterator[None]:
        """One viewer for the life of the block."""
        self.joined(org, chassis)
        try:
            yield
        finally:
            self.left(org, chassis)

    def manual(self, org: str, chassis: str, method: str) -> None:
        """A user's ``startMs``/``endMs`` that the machine accepted."""
        if method in (START, STOP):
            self._queue(self.policy.manual(org, chassis, method, self._now(org)))

    def reconfigure(self, org: str) -> None:
        """The organisation's settings changed: read them again now."""
        self._to_load.add(org)
        self._wake.set()

    # the task -----------------------------------------------------------------

    async def run(self) -> None:
        """Load settings, tick the policy and send its commands until cancelled."""
        try:
            while True:
                self._wake.clear()
                for org in list(self._to_load):
                    self._to_load.discard(org)
                    await self._load(org)
                self._outbox.extend(self.policy.tick(self.clock()))
                outbox, self._outbox = self._outbox, []
                for command in outbox:
                    self._send_soon(command)
                deadline = self.policy.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            for task in self._chains.values():
                task.cancel()

    async def _load(self, org: str) -> None:
        try:
            row = await self.meta.require_org(org)
            config = OrgConfig(bool(row.follow_viewers), float(row.viewer_grace_s))
        except LivedataError as exc:  # unknown organisation, database away: leave it off
            log.debug("settings of %s: %s", org, exc)
            config = OrgConfig()
        self._loaded[org] = self.clock()
        self._outbox.extend(self.policy.configure(org, config))

    def _now(self, org: str) -> float:
        """The time; asks for ``org``'s settings when they are not known or old."""
        now = self.clock()
        if now - self._loaded.get(org, -self.config_ttl) >= self.config_ttl:
            self._to_load.add(org)
        return now

    def _queue(self, commands: list[Command]) -> None:
        """Commands to send; wakes the task either way (a deadline may have changed)."""
        self._outbox.extend(commands)
        self._wake.set()

    def _send_soon(self, command: Command) -> None:
        key = (command.org, command.chassis)
        before = self._chains.get(key)

        async def chained() -> None:
            if before is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await before
            ok, already = await self._send(command)
            self._queue(self.policy.sent(command, ok, self.clock(), already))
            if self._chains.get(key) is task:
                del self._chains[key]

        task = asyncio.create_task(chained())
        self._chains[key] = task

    async def _send(self, command: Command) -> tuple[bool, bool]:
        """Send ``command``; (delivered and accepted, not sent because already running)."""
        org, chassis = command.org, command.chassis
        try:
            if not self.devices.status(org, chassis).connected:
                return False, False
            await self.catalog.require_machine(org, chassis)
            # a stream running before the viewers is not theirs
            if command.method == START and await self.status.ask_realtime(org, chassis) == "on":
                return True, True
            sent = await send_command(
                self.status,
                org,
                chassis,
                command.method,
                None,
                who=WHO,
                reason=REASON,
                response_timeout=RESPONSE_TIMEOUT_S,
            )
        except LivedataError as exc:
            log.info("%s of %s/%s not sent: %s", command.method, org, chassis, exc)
            return False, False
        result = sent.status or sent.outcome
        log.info("%s %s/%s for its viewers: %s", command.method, org, chassis, result)
        return sent.outcome == "ok" and sent.status == 200, False
