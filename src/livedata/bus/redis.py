"""Redis Pub/Sub for the live channels: ``redis://host:port/db[?prefix=P&backlog=N]``.

``prefix`` (default none) is put before every channel name on the wire, so
several deployments (or test runs) can share one Redis without seeing each
other's messages; Pub/Sub ignores the database number, so ``/db`` does not
separate them.  Handlers get the channel name without the prefix.

Each :class:`RedisPubSub` holds one connection pool for ``PUBLISH`` (at most
:data:`MAX_CONNECTIONS`; more concurrent publishes wait for a free connection)
and **one** pub/sub connection for everything it subscribes to.  ``subscribe`` sends
``SUBSCRIBE`` for that exact channel, never a pattern: with many gateways a
pattern would deliver every message to every gateway, while exact channels let
Redis send each gateway only what its clients watch.  ``unsubscribe`` sends
``UNSUBSCRIBE``, so a gateway whose last client of a channel left stops
receiving it.  The pub/sub connection is read by an asyncio protocol with a
hiredis parser (``bus/redis_subscriber.py``: no task, timer or await per
message) that calls the channel's handler for each message as its bytes arrive;
a handler that raises is logged and the others still get their messages.  A
watchdog task reconnects it when it is lost (below).

History for recovery after a reconnect (:meth:`RedisPubSub.history`): beside
each channel a capped stream under the same name (keys and channels are
separate namespaces in Redis) keeps its recent messages.  ``publish`` sends
``XADD`` (capped at ``HISTORY_MAX`` entries) and ``PUBLISH``, and for a channel
not trimmed in the last :data:`TRIM_EVERY` seconds ``XTRIM MINID`` (entries older
than ``history_seconds``, 180 by default) and ``PEXPIRE`` (an idle channel's
stream vanishes ``history_seconds`` + :data:`TRIM_EVERY` after its last message);
``publish_many`` (distribute's way: one call per batch of the log) sends up to
:data:`FLUSH_CHUNK` messages at once.  A channel gets one message a second and a
batch holds each channel once, so trimming and expiring per batch was per message:
more than half of Redis's work for a live message (2.5 of 5.4 µs, ``INFO
commandstats`` at 4,000 messages/s); between two trims a stream holds at most
:data:`TRIM_EVERY` seconds more, which :meth:`RedisPubSub.history` leaves out.  All of it is one call of a Lua script
(:data:`PUBLISH_SCRIPT`, ``EVALSHA``; sent once with ``EVAL`` when Redis answers
``NOSCRIPT``, as after a restart): one command and one reply per batch, since parsing a
reply per command was most of distribute's CPU.  The command is packed in C
(``hiredis.pack_command``), each channel's name encoded once: redis-py's packing
encodes every argument in Python.  So the pub/sub needs one Redis, not Redis Cluster
(a batch's channels hash to many slots).  Every gateway reads the same history.  The time cut uses this host's clock, so hosts need NTP-synchronised
clocks (a skew of a few seconds only shortens or lengthens the history by as
much).

Under stress:

* **Redis down or restarting.**  A ``publish`` that fails (after one immediate
  reconnect attempt, bounded by the connect timeout) keeps its message in a local
  backlog, as does every ``publish`` after it until the backlog has been sent (so
  the order per channel holds, and distribute does not wait on a dead Redis).  A
  flusher task sends the backlog, oldest first and up to :data:`FLUSH_CHUNK`
  messages per round trip, into the channels' history streams and ``PUBLISH``, as
  soon as Redis answers again (retried with backoff, 0.5 s doubling to
  :data:`BACKOFF_MAX`) -- so a client that reconnects with its ``since`` recovers
  what was published during the restart.  The backlog holds ``backlog`` messages
  (URL option, :data:`BACKLOG_MAX` by default: 40 s of 500 machines at 1 Hz);
  beyond it the oldest are dropped and counted (:attr:`RedisPubSub.dropped`): the
  store has them, and clients fill that gap from the history API
  (``recovered: false``).  The failure is logged once a minute with a count
  (:class:`~livedata.ratelog.Throttled`) and once when Redis is back.  The reader
  notices the lost connection, reconnects with backoff (0.5 s doubling to
  :data:`BACKOFF_MAX`, with jitter so a fleet of gateways does not reconnect in
  step) and then re-subscribes every channel that is subscribed at that moment.
  ``subscribe`` and ``unsubscribe`` never fail because Redis is down: they are
  remembered and take effect on the reconnect.
* **A slow reader.**  Redis pushes messages as they come; what this process
  has not read yet sits in the socket (the protocol parses all it reads), and beyond
  that in Redis's output buffer for the connection, which Redis caps
  (``client-output-buffer-limit pubsub``, 32 MB hard / 8 MB for 60 s by
  default) by closing the connection — then the reconnect above applies and the
  messages in between are lost.  So handlers must be fast: the gateway's
  handler only puts the message on bounded per-client queues.
* **A silent network failure** (no FIN/RST) is found by a ``PING`` on the
  pub/sub connection when nothing was heard for :data:`PING_INTERVAL` seconds;
  no answer within :data:`PING_TIMEOUT` counts as a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from livedata import errors
from livedata.bus.base import HISTORY_MAX, Handler, Message, PubSub, encoded
from livedata.bus.redis_subscriber import Subscriber, open_subscriber
from livedata.errors import BusError, ConfigError, ErrorMap, map_exceptions
from livedata.ratelog import Throttled
from livedata.retry import backoff

log = logging.getLogger("livedata.bus.redis")

BACKOFF_MIN = 0.5
"""Seconds before the first reconnect attempt."""
BACKOFF_MAX = 2.0
"""Seconds between reconnect attempts at most (live resumes within that of Redis's return)."""
BACKLOG_MAX = 20_000
"""Messages kept while Redis is unreachable, by default (the ``backlog`` URL option)."""
KEY_CACHE_MAX = 100_000
"""Channel names whose wire form is kept (beyond it the cache starts afresh)."""
FLUSH_CHUNK = 500
"""Messages of the backlog sent per round trip once Redis is back."""
CONNECT_TIMEOUT = 2.0
"""Seconds a connection attempt may take."""
COMMAND_TIMEOUT = 5.0
"""Seconds a ``PUBLISH`` may take (and may wait for a free connection)."""
MAX_CONNECTIONS = 32
"""Connections per object: the pub/sub one and those publishing concurrently."""
PING_INTERVAL = 15.0
"""Seconds of silence on the pub/sub connection before it is pinged."""
PING_TIMEOUT = 5.0
"""Seconds to wait for the answer to that ping before reconnecting."""
TRIM_EVERY = 10.0
"""Seconds between two ``XTRIM`` + ``PEXPIRE`` of one channel's history stream."""


ERRORS: ErrorMap = {
    (redis_errors.TimeoutError, TimeoutError): errors.BusTimeout,
    (redis_errors.ConnectionError, OSError): errors.BusUnavailable,
    redis_errors.InvalidResponse: errors.BusProtocolError,
    (redis_errors.RedisError, hiredis.ReplyError): BusError,
}
"""redis-py's (and the socket's) errors → the project's."""


def map_errors(what: str) -> contextlib.AbstractContextManager[None]:
    """Re-raise redis-py's (and the socket's) errors as :class:`BusError` subclasses."""
    return map_exceptions(ERRORS, what, str)


PUBLISH_SCRIPT = """
local maxlen, cutoff, keep, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
for i = 1, n do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*', 'm', ARGV[i + 4])
  redis.call('PUBLISH', KEYS[i], ARGV[i + 4])
end
for i = n + 1, #KEYS do
  redis.call('XTRIM', KEYS[i], 'MINID', '~', cutoff)
  redis.call('PEXPIRE', KEYS[i], keep)
end
return n
"""
"""A batch of live messages into their history streams and channels (KEYS: the n channels
of the messages, then the streams to trim and expire; ARGV: HISTORY_MAX, the time cut in
ms, the streams' lifetime in ms, n, then the messages)."""


def _pack(*args: bytes) -> bytes:
    """One command in the Redis protocol, packed in C."""
    return hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub types one argument


class RedisPubSub(PubSub):
    """Live fan-out over Redis Pub/Sub; ``redis://host:port/db[?prefix=P]``."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        self._prefix = "".join(value for key, value in query if key == "prefix")
        backlog = [value for key, value in query if key == "backlog"]
        try:
            self.backlog_max = int(backlog[-1]) if backlog else BACKLOG_MAX
        except ValueError:
            raise ConfigError(f"redis backlog must be a number, not {backlog[-1]!r}") from None
        if self.backlog_max < 0:
            raise ConfigError("redis backlog must not be negative")
        rest = urlencode([(key, value) for key, value in query if key not in ("prefix", "backlog")])
        self._redis_url = urlunsplit(parts._replace(query=rest))
        self._where = f"redis {parts.hostname}:{parts.port or 6379}{parts.path}"  # no password
        self._handlers: dict[str, Handler] = {}
        self._wire: dict[bytes, str] = {}
        """Channel names as Redis sends them (prefixed, bytes) → as handlers know them."""
        self._client: Redis | None = None
        self._conn: Subscriber | None = None
        self._lock = asyncio.Lock()  # (re)connecting vs. (un)subscribing
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.reconnects = 0
        """How often the pub/sub connection was re-established."""
        self._backlog: deque[tuple[str, bytes]] = deque()
        """Messages published while Redis was unreachable, oldest first."""
        self._flusher: asyncio.Task[None] | None = None
        self._sending = 0
        """Backlog messages in the flusher's round trip."""
        self.dropped = 0
        """Backlog messages dropped because the backlog was full."""
        self._failures = Throttled(log)
        self._script_sha = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest().encode()
        self._keys: dict[str, bytes] = {}
        """Channel names → their prefixed wire form (the stream's key and the channel)."""
        self._trim_due: dict[bytes, float] = {}
        """Stream keys → when (monotonic) they are to be trimmed and expired again."""

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up (subscriptions are live)."""
        return self._conn is not None

    def _redis(self) -> Redis:
        if self._client is None:
            pool = BlockingConnectionPool.from_url(
                self._redis_url,
                max_connections=MAX_CONNECTIONS,
                timeout=COMMAND_TIMEOUT,  # waiting for a free connection
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT,
                socket_keepalive=True,
                # One immediate retry, so a pooled connection that died with a
                # Redis restart is replaced; longer waits are the reader's backoff.
                retry=Retry(NoBackoff(), 1),
                client_name="livedata-pubsub",
            )
            self._client = Redis.from_pool(pool)
        return self._client

    async def start(self) -> None:
        """Connect; raises :class:`BusError` if Redis cannot be reached now."""
        if self._reader is not None:
            return
        self._closed = False
        client = self._redis()
        with map_errors(f"connect to {self._where}"):
            await client.ping()
            async with self._lock:
                await self._connect()
        self._reader = asyncio.create_task(self._read(), name=f"pubsub {self._where}")

    async def _connect(self) -> None:
        """Open the pub/sub connection and subscribe every current channel (under the lock)."""
        async with asyncio.timeout(CONNECT_TIMEOUT):
            conn = await open_subscriber(
                self._redis_url, self._dispatch, self._confirm, "livedata-pubsub"
            )
        if self._handlers:
            conn.send("SUBSCRIBE", *(self._prefix + channel for channel in self._handlers))
        self._conn = conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._release_confirmations()
        if conn is not None:
            conn.close()

    async def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        """Keep each message in its channel's history and ``PUBLISH`` it, :data:`FLUSH_CHUNK`
        messages per round trip.

        While Redis is unreachable the messages (from the first chunk that failed on)
        wait in the backlog (see the module doc); raises :class:`BusError` only when
        this object is closed.
        """
        if self._closed:
            raise BusError("pub/sub is closed")
        wire = [(channel, encoded(message)) for channel, message in messages]
        flushing = self._flusher is not None and not self._flusher.done()
        start = 0
        if not flushing:
            try:
                for start in range(0, len(wire), FLUSH_CHUNK):
                    await self._publish(wire[start : start + FLUSH_CHUNK])
                return
            except BusError as exc:
                self._failures.failed(
                    "publish",
                    "publishing on %s failed; keeping live messages (at most %d) until it "
                    "answers: %s",
                    self._where,
                    self.backlog_max,
                    exc,
                )
        self._keep(wire[start:])
        if not flushing:
            self._flusher = asyncio.create_task(self._flush(), name=f"flush {self._where}")

    def _keep(self, items: Sequence[tuple[str, bytes]], *, front: bool = False) -> None:
        """Add to the backlog (at the front: a chunk that failed again), dropping the oldest
        beyond its bound."""
        if front:
            self._backlog.extendleft(reversed(items))
        else:
            self._backlog.extend(items)
        excess = len(self._backlog) - self.backlog_max
        if excess > 0:
            for _ in range(excess):
                self._backlog.popleft()
            self.dropped += excess

    async def _publish(self, items: Sequence[tuple[str, bytes]]) -> None:
        """XADD + PUBLISH of each message, XTRIM + PEXPIRE of the channels due for it
        (:data:`TRIM_EVERY`): one :data:`PUBLISH_SCRIPT` call, so one command and one reply
        per batch.

        The command is packed here in one go (``hiredis.pack_command``, channel names
        encoded once per channel): redis-py's command path encodes every argument in
        Python, which cost more than the rest of publishing a message.
        """
        history_ms = int(self.history_seconds * 1000)
        cutoff = int(time.time() * 1000) - history_ms
        keys, due = self._keys, self._trim_due
        now = time.monotonic()
        names = []
        trim: dict[bytes, None] = {}
        for channel, _ in items:
            key = keys.get(channel)
            if key is None:
                if len(keys) >= KEY_CACHE_MAX:
                    keys.clear()
                    due.clear()
                key = keys[channel] = (self._prefix + channel).encode()
            names.append(key)
            if due.get(key, 0.0) <= now:
                trim[key] = None
        keep_ms = history_ms + int(TRIM_EVERY * 1000)
        head = (b"%d" % HISTORY_MAX, b"%d" % cutoff, b"%d" % keep_ms, b"%d" % len(names))
        tail = (*head, *(m for _, m in items))
        names += trim
        count = b"%d" % len(names)
        with map_errors(f"publish to {items[0][0]} on {self._where}"):
            try:
                await self._call(_pack(b"EVALSHA", self._script_sha, count, *names, *tail))
            except NoScriptError:  # a restarted (or flushed) Redis: EVAL loads it again
                await self._call(_pack(b"EVAL", PUBLISH_SCRIPT.encode(), count, *names, *tail))
        for key in trim:  # done: not again for TRIM_EVERY (a failed call retries them)
            due[key] = now + TRIM_EVERY

    async def _call(self, packed: bytes) -> object:
        """Send one packed command on a pooled connection and read its reply, retried once
        on a fresh connection when the pooled one turns out dead (a Redis restart)."""
        pool = self._redis().connection_pool
        conn = await pool.get_connection()
        try:
            return await conn.retry.call_with_retry(
                lambda: self._roundtrip(conn, packed), lambda error: conn.disconnect()
            )
        finally:
            await pool.release(conn)

    @staticmethod
    async def _roundtrip(conn: AbstractConnection, packed: bytes) -> object:
        await conn.send_packed_command(packed)
        return await conn.read_response()

    async def _flush(self) -> None:
        """Send the backlog once Redis answers, oldest first; until it is empty."""
        delays = backoff(BACKOFF_MIN, BACKOFF_MAX, jitter=0.2)
        sent = 0
        while self._backlog and not self._closed:
            chunk = [self._backlog.popleft() for _ in range(min(FLUSH_CHUNK, len(self._backlog)))]
            self._sending = len(chunk)
            try:
                await self._publish(chunk)
            except BusError:
                self._sending = 0  # back in the backlog: counted once while waiting
                self._keep(chunk, front=True)
                await asyncio.sleep(next(delays))
                continue
            finally:
                self._sending = 0
            sent += len(chunk)
        if sent:
            self._failures.recovered(
                "publish",
                "publishing on %s works again; %d kept messages sent, %d dropped",
                self._where,
                sent,
                self.dropped,
            )

    @property
    def backlog(self) -> int:
        """Messages waiting for Redis to come back (kept or being sent)."""
        return len(self._backlog) + self._sending

    async def history(self, channel: str) -> list[Message]:
        """The channel's messages of the last ``history_seconds`` (at most ``HISTORY_MAX``)."""
        cutoff = int(time.time() * 1000) - int(self.history_seconds * 1000)
        with map_errors(f"history of {channel} on {self._where}"):
            entries = await self._redis().xrange(self._prefix + channel, min=cutoff)
        messages: list[Message] = []
        for _, fields in (entries or [])[-HISTORY_MAX:]:
            message = (fields or {}).get(b"m")
            if isinstance(message, bytes):
                messages.append(message)
        return messages

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """``SUBSCRIBE``; returns once Redis confirmed it, so later publishes arrive.

        While Redis is down it returns at once (or after :data:`COMMAND_TIMEOUT` if
        Redis does not answer) and the reconnect subscribes.
        """
        async with self._lock:
            known = channel in self._handlers
            self._handlers[channel] = handler
            self._wire[(self._prefix + channel).encode()] = channel
            if known or self._conn is None:
                return
            confirmed = self._confirmations.get(channel)
            if confirmed is None:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirmations[channel] = confirmed
            self._send("SUBSCRIBE", channel)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(confirmed), COMMAND_TIMEOUT)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if self._handlers.pop(channel, None) is not None:
                self._wire.pop((self._prefix + channel).encode(), None)
                self._send("UNSUBSCRIBE", channel)

    def _send(self, command: str, channel: str) -> None:
        """(Un)subscribe on the live connection; if it is down, the reconnect catches up."""
        if self._conn is not None:
            self._conn.send(command, self._prefix + channel)

    async def _read(self) -> None:
        """Dispatch messages; on a lost connection reconnect with backoff and re-subscribe."""
        delays = backoff(BACKOFF_MIN, BACKOFF_MAX, jitter=0.2)
        while not self._closed:
            conn = self._conn
            if conn is None:
                delay = next(delays)
                await asyncio.sleep(delay)
                try:
                    async with self._lock:
                        if self._closed:
                            return
                        await self._connect()
                except Exception as exc:  # RedisError, OSError, or a redis-py surprise
                    log.debug("%s still unreachable: %s", self._where, exc)
                    continue
                self.reconnects += 1
                delays = backoff(BACKOFF_MIN, BACKOFF_MAX, jitter=0.2)
                self._failures.recovered(
                    "read",
                    "pub/sub on %s reconnected; re-subscribed %d channels",
                    self._where,
                    len(self._handlers),
                )
                continue
            try:
                await self._read_until_lost(conn)
            except Exception as exc:  # RedisError, OSError, or a redis-py surprise
                if self._closed:
                    return
                self._failures.failed(
                    "read",
                    "pub/sub on %s lost (%s); reconnecting (messages published meanwhile "
                    "reach the subscribers only through the channels' history)",
                    self._where,
                    exc,
                )
                async with self._lock:
                    if conn is self._conn:
                        await self._drop()

    async def _read_until_lost(self, conn: Subscriber) -> None:
        """Wait while ``conn`` delivers (its protocol dispatches); ``PING`` it after
        :data:`PING_INTERVAL` s of silence; raise when it is lost or does not answer."""
        while not self._closed and conn is self._conn:
            quiet = time.monotonic() - conn.heard
            if quiet < PING_INTERVAL:
                await asyncio.wait([conn.lost], timeout=PING_INTERVAL - quiet)
            else:
                pinged = time.monotonic()
                conn.send("PING")
                await asyncio.wait([conn.lost], timeout=PING_TIMEOUT)
                if conn.heard < pinged and not conn.lost.done():
                    raise TimeoutError(f"no answer to PING within {PING_TIMEOUT} s")
            if conn.lost.done():
                raise ConnectionError("the pub/sub connection was lost")

    def _channel(self, wire: bytes | str) -> str:
        """The channel name a handler knows, from the name on the wire."""
        name = wire.decode() if isinstance(wire, bytes) else wire
        return name.removeprefix(self._prefix)

    def _confirm(self, wire: bytes | str) -> None:
        confirmed = self._confirmations.pop(self._channel(wire), None)
        if confirmed is not None and not confirmed.done():
            confirmed.set_result(None)

    def _release_confirmations(self) -> None:
        """Let waiting ``subscribe`` calls return: the reconnect will subscribe."""
        for confirmed in self._confirmations.values():
            if not confirmed.done():
                confirmed.set_result(None)
        self._confirmations.clear()

    def follows(self) -> bool:
        """Another message of the handled message's channel follows in the same read."""
        conn = self._conn
        return conn is not None and conn.follows

    def _dispatch(self, wire: bytes, data: bytes) -> None:
        """One published message (the subscriber protocol logs what a handler raises)."""
        channel = self._wire.get(wire)
        if channel is None:  # unsubscribed while the message was on its way
            return
        self._handlers[channel](channel, data)

    async def close(self) -> None:
        """Stop the reader, drop the subscriptions and the connections."""
        self._closed = True
        self._handlers.clear()
        self._wire.clear()
        for task in (self._reader, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reader = self._flusher = None
        await self._drop()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
