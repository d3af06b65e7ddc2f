"""Telemetry load from simulated devices over a real MQTT broker, for the fault tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from livedata.devices.mqtt import MqttDevice
from livedata.errors import BackendError
from livedata.model import DeviceMessage, MsgType


async def send_until(
    device: MqttDevice, stop: asyncio.Event, period: float, sent: Callable[[int], None]
) -> None:
    """Send a ``client_raw_data`` message of 8 values every ``period`` seconds until ``stop``,
    each with a timestamp unique to the machine and close to now; ``sent(ts)`` once the
    broker has it (PUBACK).  A send that fails (broker busy or gone) is skipped."""
    ts = int(time.time() * 1000)
    while not stop.is_set():
        ts += 1
        values = {f"s{k}": ts % 1000 + k / 8 for k in range(8)}
        message = DeviceMessage("acme", device.chassis, MsgType.CLIENT_RAW_DATA, ts, values=values)
        with contextlib.suppress(BackendError):
            await device.send(message)
            sent(ts)
        await asyncio.sleep(period)


async def stop_load(
    stop: asyncio.Event, tasks: list[asyncio.Task[None]], devices: list[MqttDevice]
) -> None:
    """End the senders (their tasks cancelled) and close their devices."""
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for device in devices:
        await device.close()
