"""The edge agent: CAN bus and device metrics to MQTT, real-time on/off, store and forward.

Once per second (aligned to wall-clock seconds) the agent sends, for the second
that just ended:

- one ``vehicle_can`` message with every CAN frame read in that second (python-can:
  any interface — ``socketcan``, ``virtual`` for tests … — or a recorded log file
  replayed through ``can.LogReader`` in real time, looping); none when no frame came;
- one ``client_raw_data`` message with ``cpu_usage``, ``mem_usage``, ``disk_usage``
  (psutil, percent) and, when configured, a fixed ``gps_lat`` / ``gps_lng``.

Real-time on/off.  The agent answers the direct methods ``startMs`` / ``endMs`` /
``getStatus`` (:func:`livedata.devices.base.answer_realtime`).  The state is written
to a small JSON state file at once, so it survives restarts.  **While real-time is
off the agent sends no real-time data**; by default (``history_when_stopped``) it
keeps sending each second as ``backfill`` — stored for history, never pushed to live
pages — so history stays complete while the Live Data page stops moving; with
``history_when_stopped=False`` (``--no-history-when-stopped``) it sends nothing.

Store and forward.  A message the broker does not take (not connected, or no PUBACK
within ``send_timeout``) goes to the :class:`~livedata.agent.spool.Spool` as
``backfill``.  A separate task sends the spool oldest first, at most
``backfill_rate`` messages per second, only while connected, deleting each row
after its PUBACK; live messages never wait for it.  While the spool is not empty,
new live messages still go out live (they are newer than everything in it).

Reconnect: :class:`~livedata.devices.mqtt.MqttDevice` reconnects with backoff
(0.5 … 30 s) once connected; the first connection is retried the same way, the
agent collecting and spooling meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livedata.agent.spool import Spool
from livedata.codec import decode, encode
from livedata.devices.base import MethodResult, answer_realtime
from livedata.errors import BackendError
from livedata.model import DeviceMessage, Frame, Kind, MsgType

log = logging.getLogger("livedata.agent")


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
    send_timeout: float = 5.0
    gps: tuple[float, float] | None = None
    history_when_stopped: bool = True


class CanReader:
    """Reads frames in a thread into a buffer; :meth:`take` returns and clears it."""

    def __init__(self, source: Callable[[], Iterator[Any]], close: Callable[[], None]) -> None:
        self._source = source
        self._close = close
        self._frames: list[Frame] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="can-reader", daemon=True)
        self.frames_read = 0

    @classmethod
    def open(cls, config: AgentConfig) -> CanReader:
        import can

        if config.can_log is not None:
            path = str(config.can_log)

            def replay() -> Iterator[Any]:
                while True:  # loop the recording
                    yield from can.MessageSync(can.LogReader(path), timestamps=True)

            return cls(replay, lambda: None)
        bus = can.Bus(interface=config.can_interface, channel=config.can_channel)

        def receive() -> Iterator[Any]:
            while True:
                yield bus.recv(0.2)

        return cls(receive, bus.shutdown)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for msg in self._source():
            if self._stop.is_set():
                break
            if msg is None or msg.is_error_frame or msg.is_remote_frame:
                continue
            frame = Frame(
                int(time.time() * 1000),
                int(msg.arbitration_id),
                bool(msg.is_extended_id),
                bytes(msg.data),
            )
            with self._lock:
                self._frames.append(frame)
                self.frames_read += 1

    def take(self, before_ms: int) -> list[Frame]:
        """The buffered frames stamped before ``before_ms`` (removed from the buffer)."""
        with self._lock:
            taken = [f for f in self._frames if f.ts < before_ms]
            self._frames = [f for f in self._frames if f.ts >= before_ms]
        return taken

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with contextlib.suppress(Exception):
            self._close()


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
    def __init__(self, config: AgentConfig, reader: CanReader | None = None) -> None:
        from livedata.devices.mqtt import MqttDevice

        self.config = config
        self.reader = reader or CanReader.open(config)
        self.spool = Spool(config.spool_file, config.spool_max_rows, config.spool_max_bytes)
        self.device = MqttDevice(config.mqtt, config.tenant, config.chassis, self.on_method)
        self.realtime = self._load_state()
        self.counters = {"live": 0, "spooled": 0, "backfilled": 0, "history": 0}
        self._wake = asyncio.Event()

    # state ----------------------------------------------------------------------

    def _load_state(self) -> bool:
        try:
            return bool(json.loads(self.config.state_file.read_text())["realtime"])
        except (OSError, ValueError, KeyError, TypeError):
            return True

    def set_realtime(self, on: bool) -> None:
        self.realtime = on
        path = self.config.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"realtime": on}))
        tmp.replace(path)
        log.info("real-time %s", "on" if on else "off")

    async def on_method(self, method: str, payload: Any) -> MethodResult:
        return answer_realtime(method, lambda: self.realtime, self.set_realtime)

    # running --------------------------------------------------------------------

    async def run(self) -> None:
        """Collect and send until cancelled."""
        self.reader.start()
        tasks = [
            asyncio.create_task(self._connect(), name="agent-connect"),
            asyncio.create_task(self._drain(), name="agent-backfill"),
        ]
        try:
            await self._collect()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.reader.stop()
            await self.device.close()
            self.spool.close()

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.device.connect()
                log.info("connected as %s", self.device.client_id)
                self._wake.set()
                return
            except BackendError as exc:
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 30.0)

    async def _collect(self) -> None:
        import psutil

        psutil.cpu_percent(interval=None)  # the first call only starts the measurement
        while True:
            now = time.time()
            end = (int(now) + 1) * 1000
            await asyncio.sleep(end / 1000 - now)
            second = end - 1000
            frames = self.reader.take(end)
            messages = []
            t = self.config
            if frames:
                messages.append(
                    DeviceMessage(
                        t.tenant, t.chassis, MsgType.VEHICLE_CAN, second, frames=tuple(frames)
                    )
                )
            messages.append(
                DeviceMessage(
                    t.tenant, t.chassis, MsgType.CLIENT_RAW_DATA, second, values=metrics(t.gps)
                )
            )
            for message in messages:
                await self._emit(message)

    async def _emit(self, message: DeviceMessage) -> None:
        if not self.realtime:
            if not self.config.history_when_stopped:
                return
            message = _as_backfill(message)
            self.counters["history"] += 1
        if self.device.connected:
            try:
                await asyncio.wait_for(self.device.send(message), self.config.send_timeout)
                if message.kind == Kind.REALTIME:
                    self.counters["live"] += 1
                return
            except (BackendError, TimeoutError) as exc:
                log.info("send failed (%s); spooling", exc)
        self.spool.push(message.msg_type, encode(_as_backfill(message)))
        self.counters["spooled"] += 1

    async def _drain(self) -> None:
        """Send the spool oldest first at ``backfill_rate`` while connected."""
        interval = 1.0 / self.config.backfill_rate
        t = self.config
        while True:
            if not self.device.connected or not self.spool.rows:
                await asyncio.sleep(0.5)
                continue
            for row_id, msg_type, payload in self.spool.oldest(50):
                if not self.device.connected:
                    break
                message = decode(t.tenant, t.chassis, msg_type, payload)
                try:
                    await asyncio.wait_for(self.device.send(message), t.send_timeout)
                except (BackendError, TimeoutError):
                    break
                self.spool.delete(row_id)
                self.counters["backfilled"] += 1
                await asyncio.sleep(interval)


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
