"""The edge agent: CAN bus and device metrics to MQTT, real-time on/off, store and forward.

Once per second (aligned to wall-clock seconds) the agent sends, for the second
that just ended:

- ``vehicle_can`` with every CAN frame read in that second (python-can: any
  interface — ``socketcan``, ``virtual`` for tests … — or a recorded log file in any
  format ``can.LogReader`` reads, ``.asc``, ``.blf``, ``.csv``, ``.log``, ``.trc`` …,
  replayed at its recorded pace, looping); none when no frame came, several when
  more than :data:`~livedata.codec.MAX_FRAMES` came;
- one ``client_raw_data`` message with ``cpu_usage``, ``mem_usage``, ``disk_usage``
  (psutil, percent) and, when configured, a fixed ``gps_lat`` / ``gps_lng``.

Collecting never waits for the network: each second's messages are handed to
their own send tasks, so a broker that is slow, silent or gone cannot make the agent
skip a second.  If the event loop itself is held up (a starved CPU), the seconds it
missed are sent late, each with its own frames, up to :data:`MAX_CATCH_UP_S`; a
larger jump of the wall clock is logged and the agent resynchronises.

Real-time on/off.  The agent answers the direct methods ``startMs`` / ``endMs`` /
``getStatus`` (:func:`livedata.devices.base.answer_realtime`).  The state is written
to a small JSON state file (fsync'd, then renamed) *before* it takes effect, so it
survives restarts and power loss; if the file cannot be written the method fails
(500) and nothing changes.  **While real-time is off the agent sends no real-time
data**; by default (``history_when_stopped``) it keeps sending each second as
``backfill`` — stored for history, never pushed to live pages — so history stays
complete while the Live Data page stops moving; with ``history_when_stopped=False``
(``--no-history-when-stopped``) it sends nothing.  The server learns the state from
each method's answer and, after a (re)connect, by asking ``getStatus``.

Store and forward.  A message counts as sent only when the broker acknowledged it
*as delivered* (:mod:`livedata.agent.delivery`: PUBACK within ``send_timeout`` with a
reason code that is neither an error nor "no matching subscribers").  Anything else —
not connected, connection lost while waiting, no PUBACK in time, no subscriber (the
broker restarted and ingest has not subscribed again yet), not authorized — puts
the message into the :class:`~livedata.agent.spool.Spool` marked ``backfill``.  So
does stopping the agent for the messages still awaiting their PUBACK, and so does
a message that would exceed ``max_inflight`` live messages awaiting PUBACKs.  A
message the broker refuses for good (too large, invalid, …) is dropped instead,
counted in ``refused`` and logged as an error, so it cannot hold back the spool.

A separate task sends the spool oldest first, at most ``backfill_rate`` messages per
second and ``backfill_window`` awaiting their PUBACK at once, only while connected,
deleting each row after its PUBACK.  After a failure it lets the ones already in
flight finish, backs off (0.5 … 5 s) and starts again from the oldest row left: the
order is oldest first, except that a message that failed may be overtaken by the at
most ``backfill_window - 1`` sent after it (``backfill_window=1``: strictly in
order), and while the oldest row is not taken the newer ones wait.  Live messages
never wait for it: while the spool is not empty, new messages still go out live
(they are newer than everything in it).  Delivery is at least once: a message whose
PUBACK was lost may reach the server twice, which stores write idempotently.

Under stress, in short: a full spool drops its oldest rows (counted, logged); a
message the codec cannot encode (a device bug) is dropped and logged, never kept;
a spool write that fails (disk full) loses that message, counted in ``lost`` and
logged; a CAN reader that fails (interface down, unreadable log line) is logged and
restarted a second later; the CAN buffer between two seconds is bounded
(``max_frames_buffered``, oldest dropped and counted).

Reconnect: :class:`~livedata.devices.mqtt.MqttDevice` reconnects with backoff
(0.5 … 30 s) once connected; the first connection is retried the same way (also
after a refusal such as bad credentials, logged as an error), the agent collecting
and spooling meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livedata.agent.delivery import AckedDevice, NotDelivered
from livedata.agent.spool import Spool
from livedata.codec import MAX_FRAMES, encode
from livedata.devices.base import MethodResult, answer_realtime
from livedata.errors import BackendError, ConfigError
from livedata.model import DeviceMessage, Frame, Kind, MsgType
from livedata.retry import backoff

log = logging.getLogger("livedata.agent")

MAX_CATCH_UP_S = 10
"""Seconds the collector sends late after a stall; a longer gap is skipped (logged)."""
BACKFILL_BATCH = 100
"""Spool rows read per round of the backfill task."""
RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0
"""Backoff of the backfill task after the broker did not take a spooled message."""
MAX_REPLAY_GAP_S = 60.0
"""A pause longer than this in a replayed CAN log is shortened to it."""
FAILURE_LOG_EVERY_S = 60.0
"""The same delivery failure is logged at most once per this many seconds."""


@dataclass
class AgentConfig:
    mqtt: str
    tenant: str
    chassis: str
    can_interface: str | None = "virtual"
    can_channel: str | None = "0"
    can_log: Path | None = None
    state_file: Path = Path("livedata-agent-state.json")
    spool_file: Path = Path("livedata-agent-spool.sqlite")
    spool_max_rows: int = 100_000
    spool_max_bytes: int = 64 << 20
    backfill_rate: float = 20.0
    backfill_window: int = 10
    send_timeout: float = 5.0
    max_inflight: int = 20
    max_frames_buffered: int = 100_000
    gps: tuple[float, float] | None = None
    history_when_stopped: bool = True


class CanReader:
    """Reads frames in a thread into a bounded buffer; :meth:`take` returns and clears it.

    Each frame is stamped with the wall clock when it is read (a replayed log too, so
    a recording plays as if it were live).  The buffer holds ``max_frames``; beyond
    that the oldest are dropped and counted in :attr:`frames_dropped` (only when
    nothing takes them, i.e. the collector is stalled).  When the source fails (a
    bus error, an unreadable log line) it is logged and reopened a second later.
    """

    def __init__(
        self,
        source: Callable[[threading.Event], Iterator[Any]],
        close: Callable[[], None],
        max_frames: int = 100_000,
    ) -> None:
        self._source = source
        self._close = close
        self._frames: deque[Frame] = deque()
        self._max_frames = max_frames
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="can-reader", daemon=True)
        self.frames_read = 0
        self.frames_dropped = 0

    @classmethod
    def open(cls, config: AgentConfig) -> CanReader:
        """The reader of ``config``'s log file or bus; :class:`ConfigError` if it cannot be read."""
        import can

        if config.can_log is not None:
            path = config.can_log
            try:
                with can.LogReader(str(path)) as reader:
                    first = next(iter(reader), None)
            except Exception as exc:  # python-can raises many kinds for a bad file
                raise ConfigError(f"cannot read CAN log {path}: {exc}") from None
            if first is None:
                raise ConfigError(f"CAN log {path} has no frames")
            return cls(
                lambda stop: replay_log(path, stop), lambda: None, config.max_frames_buffered
            )
        try:
            bus = can.Bus(interface=config.can_interface, channel=config.can_channel)
        except Exception as exc:
            raise ConfigError(
                f"cannot open CAN bus {config.can_interface}:{config.can_channel}: {exc}"
            ) from None

        def receive(stop: threading.Event) -> Iterator[Any]:
            while not stop.is_set():
                yield bus.recv(0.2)

        return cls(receive, bus.shutdown, config.max_frames_buffered)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for msg in self._source(self._stop):
                    if self._stop.is_set():
                        return
                    if msg is None or msg.is_error_frame or msg.is_remote_frame:
                        continue
                    self._add(
                        Frame(
                            int(time.time() * 1000),
                            int(msg.arbitration_id),
                            bool(msg.is_extended_id),
                            bytes(msg.data),
                        )
                    )
                return  # a source that ends (an empty log) ends reading
            except Exception as exc:
                log.warning("CAN source failed (%s); reopening in 1 s", exc)
                self._stop.wait(1.0)

    def _add(self, frame: Frame) -> None:
        with self._lock:
            if len(self._frames) >= self._max_frames:
                self._frames.popleft()
                self.frames_dropped += 1
            self._frames.append(frame)
            self.frames_read += 1

    def take(self, before_ms: int) -> list[Frame]:
        """The buffered frames stamped before ``before_ms`` (removed from the buffer)."""
        with self._lock:
            taken = [f for f in self._frames if f.ts < before_ms]
            if len(taken) == len(self._frames):
                self._frames.clear()
            elif taken:
                self._frames = deque(f for f in self._frames if f.ts >= before_ms)
        return taken

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(Exception):
            self._close()


def replay_log(path: Path, stop: threading.Event) -> Iterator[Any]:
    """The messages of a python-can log file at their recorded pace, looping until ``stop``.

    Pauses longer than :data:`MAX_REPLAY_GAP_S` are shortened to it; ``stop``
    interrupts a pause at once.  Ends when a pass yields nothing.
    """
    import can

    while not stop.is_set():
        count = 0
        started = time.monotonic()
        first: float | None = None
        skipped = 0.0
        with can.LogReader(str(path)) as reader:
            for msg in reader:
                if first is None:
                    first = float(msg.timestamp)
                wait = started + float(msg.timestamp) - first - skipped - time.monotonic()
                if wait > MAX_REPLAY_GAP_S:
                    skipped += wait - MAX_REPLAY_GAP_S
                    wait = MAX_REPLAY_GAP_S
                if wait > 0 and stop.wait(wait):
                    return
                count += 1
                yield msg
        if count == 0:
            return


def metrics(gps: tuple[float, float] | None) -> dict[str, Any]:
    import psutil

    values: dict[str, Any] = {
        "cpu_usage": psutil.cpu_percent(interval=None),
        "mem_usage": psutil.virtual_memory().percent,
        "disk_usage": psutil.disk_usage("/").percent,
    }
    if gps is not None:
        values["gps_lat"], values["gps_lng"] = gps
    return values


class Agent:
    """One machine's agent; :meth:`run` until cancelled.  See the module doc.

    ``counters``: ``live`` (real-time messages delivered), ``history`` (messages sent
    as backfill because real-time was off), ``spooled``, ``backfilled`` (spooled ones
    delivered later), ``lost`` (a spool write failed), ``unsendable`` (could not be
    encoded), ``refused`` (the broker refused it for good, see
    :class:`~livedata.agent.delivery.Refused`).  Messages dropped from a full spool are ``agent.spool.dropped``.
    """

    def __init__(self, config: AgentConfig, reader: CanReader | None = None) -> None:
        self.config = config
        self.reader = reader or CanReader.open(config)
        self.spool = Spool(config.spool_file, config.spool_max_rows, config.spool_max_bytes)
        self.device = AckedDevice(
            config.mqtt,
            config.tenant,
            config.chassis,
            self.on_method,
            send_timeout=config.send_timeout,
        )
        self.realtime = self._load_state()
        self.counters = {
            "live": 0,
            "history": 0,
            "spooled": 0,
            "backfilled": 0,
            "lost": 0,
            "unsendable": 0,
            "refused": 0,
        }
        self._unsettled: dict[int, DeviceMessage] = {}
        """Live messages handed to a send task and neither acknowledged nor spooled yet."""
        self._sends: set[asyncio.Task[None]] = set()
        self._keys = itertools.count()
        self._failing = False
        self._failures_logged: dict[str, float] = {}

    @property
    def in_flight(self) -> list[DeviceMessage]:
        """Live messages handed to the broker and not yet acknowledged (nor spooled)."""
        return list(self._unsettled.values())

    # state ----------------------------------------------------------------------

    def _load_state(self) -> bool:
        path = self.config.state_file
        try:
            return bool(json.loads(path.read_text())["realtime"])
        except FileNotFoundError:
            return True
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("state file %s unreadable (%s); real-time on", path, exc)
            return True

    def set_realtime(self, on: bool) -> None:
        """Write the state to disk, then apply it (an :class:`OSError` changes nothing)."""
        path = self.config.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps({"realtime": on}))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        self.realtime = on
        log.info("real-time %s", "on" if on else "off")

    async def on_method(self, method: str, payload: Any) -> MethodResult:
        return answer_realtime(method, lambda: self.realtime, self.set_realtime)

    # running --------------------------------------------------------------------

    async def run(self) -> None:
        """Collect and send until cancelled; then spool what is unacknowledged and close."""
        self.reader.start()
        tasks = [
            asyncio.create_task(self._connect(), name="agent-connect"),
            asyncio.create_task(self._drain(), name="agent-backfill"),
        ]
        try:
            await self._collect()
        finally:
            tasks.extend(self._sends)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for message in self._unsettled.values():  # cancelled before their PUBACK
                self._spool(message)
            self._unsettled.clear()
            self.reader.stop()
            await self.device.close()
            self.spool.close()

    async def _connect(self) -> None:
        delays = backoff(0.5, 30.0, jitter=0.2)
        while True:
            try:
                await self.device.connect()
                log.info("connected as %s", self.device.client_id)
                return
            except BackendError as exc:
                delay = next(delays)
                log.warning("%s; retrying in %.1f s", exc, delay)
            except ConfigError as exc:  # e.g. credentials refused: may be fixed on the broker
                delays = backoff(30.0, 30.0, jitter=0.2)
                delay = next(delays)
                log.error("%s; retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)

    async def _collect(self) -> None:
        import psutil

        psutil.cpu_percent(interval=None)  # the first call only starts the measurement
        end = (int(time.time()) + 1) * 1000
        while True:
            now = time.time()
            if end / 1000 - now > 2.0:  # the wall clock went back
                log.warning("clock went back %.1f s; resynchronising", end / 1000 - now - 1)
                end = (int(now) + 1) * 1000
            await asyncio.sleep(max(0.0, end / 1000 - time.time()))
            late = int(time.time()) * 1000 - end
            if late > MAX_CATCH_UP_S * 1000:
                log.warning("%d s without collecting (clock jump or stall); skipped", late // 1000)
                end += (late // 1000) * 1000
            try:
                self._tick(end - 1000, end)
            except Exception:  # never let one bad second stop the agent
                log.exception("collecting the second %d failed", end - 1000)
            end += 1000

    def _tick(self, second: int, end: int) -> None:
        t = self.config
        frames = [
            f if second <= f.ts < end else Frame(min(max(f.ts, second), end - 1), *_rest(f))
            for f in self.reader.take(end)
        ]
        for i in range(0, len(frames), MAX_FRAMES):
            chunk = tuple(frames[i : i + MAX_FRAMES])
            self._dispatch(
                DeviceMessage(t.tenant, t.chassis, MsgType.VEHICLE_CAN, second, frames=chunk)
            )
        self._dispatch(
            DeviceMessage(
                t.tenant, t.chassis, MsgType.CLIENT_RAW_DATA, second, values=metrics(t.gps)
            )
        )

    def _dispatch(self, message: DeviceMessage) -> None:
        """Start sending ``message`` (or spool it at once); never waits."""
        if not self.realtime:
            if not self.config.history_when_stopped:
                return
            message = _as_backfill(message)
            self.counters["history"] += 1
        try:
            payload = encode(message)
        except ValueError as exc:
            self.counters["unsendable"] += 1
            log.error("cannot encode %s of %d (%s); dropped", message.msg_type, message.ts, exc)
            return
        if not self.device.connected or len(self._unsettled) >= self.config.max_inflight:
            self._spool(message)
            return
        key = next(self._keys)
        self._unsettled[key] = message
        task = asyncio.create_task(self._send_live(key, message, payload))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send_live(self, key: int, message: DeviceMessage, payload: bytes) -> None:
        try:
            await self.device.publish(message.msg_type, payload)
        except NotDelivered as exc:
            self._unsettled.pop(key, None)
            if exc.permanent:
                self._refused(message.msg_type, message.ts, exc)
                return
            self._note_failure(exc)
            self._spool(message)
            return
        self._unsettled.pop(key, None)
        self._note_success()
        if message.kind == Kind.REALTIME:
            self.counters["live"] += 1

    def _spool(self, message: DeviceMessage) -> None:
        try:
            self.spool.push(message.msg_type, encode(_as_backfill(message)))
        except sqlite3.Error as exc:
            self.counters["lost"] += 1
            log.error(
                "spool write failed (%s): the %s of %d is lost", exc, message.msg_type, message.ts
            )
            return
        self.counters["spooled"] += 1

    def _refused(self, msg_type: str, ts: int, exc: Exception) -> None:
        self.counters["refused"] += 1
        log.error("%s of %d dropped: %s", msg_type, ts, exc)

    def _note_failure(self, exc: Exception) -> None:
        """Log a delivery failure: each reason once a minute at most, however often it happens."""
        why = str(exc)
        now = time.monotonic()
        if now - self._failures_logged.get(why, -FAILURE_LOG_EVERY_S) >= FAILURE_LOG_EVERY_S:
            self._failures_logged[why] = now
            log.warning("the broker did not take a message (%s); keeping it in the spool", why)
        self._failing = True

    def _note_success(self) -> None:
        if self._failing:
            self._failing = False
            log.info("the broker takes messages again; %d spooled to send", self.spool.rows)

    async def _drain(self) -> None:
        """Send the spool oldest first, paced, while connected; back off after a failure."""
        delays = backoff(RETRY_MIN_S, RETRY_MAX_S, jitter=0.2)
        while True:
            try:
                if not self.device.connected or not self.spool.rows:
                    await asyncio.sleep(0.5)
                    continue
                if await self._drain_batch():
                    delays = backoff(RETRY_MIN_S, RETRY_MAX_S, jitter=0.2)
                    continue
            except Exception:
                log.exception("sending the spool failed")
            await asyncio.sleep(next(delays))

    async def _drain_batch(self) -> bool:
        """Send up to :data:`BACKFILL_BATCH` oldest rows; False if one was not delivered."""
        interval = 1.0 / self.config.backfill_rate
        pending: set[asyncio.Task[bool]] = set()
        ok = True
        try:
            for row in self.spool.oldest(BACKFILL_BATCH):
                if not self.device.connected:
                    break
                while len(pending) >= self.config.backfill_window:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    ok = ok and all(task.result() for task in done)
                if not ok:
                    break
                pending.add(asyncio.create_task(self._backfill(*row)))
                await asyncio.sleep(interval)
            if pending:
                done, pending = await asyncio.wait(pending)
                ok = ok and all(task.result() for task in done)
        finally:
            for task in pending:
                task.cancel()
        return ok

    async def _backfill(self, row_id: int, msg_type: str, payload: bytes) -> bool:
        try:
            await self.device.publish(msg_type, payload)
        except NotDelivered as exc:
            if not exc.permanent:
                self._note_failure(exc)
                return False
            self._refused(msg_type, _ts_of(payload), exc)
        else:
            self._note_success()
            self.counters["backfilled"] += 1
        try:
            self.spool.delete(row_id)
        except sqlite3.Error as exc:  # it stays and is sent again: a harmless duplicate
            log.error("spool delete failed: %s", exc)
            return False
        return True


def _ts_of(payload: bytes) -> int:
    """The timestamp of an encoded message, for log lines (-1 if unreadable)."""
    with contextlib.suppress(Exception):
        if payload[:1] == b"{":
            return int(json.loads(payload)["ts"])
        return int.from_bytes(payload[2:10], "little", signed=True)
    return -1


def _rest(frame: Frame) -> tuple[int, bool, bytes]:
    return frame.arbitration_id, frame.is_extended, frame.data


def _as_backfill(message: DeviceMessage) -> DeviceMessage:
    if message.kind == Kind.BACKFILL:
        return message
    return DeviceMessage(
        message.tenant,
        message.chassis,
        message.msg_type,
        message.ts,
        Kind.BACKFILL,
        message.frames,
        message.values,
    )
