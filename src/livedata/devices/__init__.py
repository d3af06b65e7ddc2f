"""Device links: how machines' messages reach ingest."""

from __future__ import annotations

from livedata.backends import load
from livedata.devices.base import DeviceLink

SUPPORTED_BACKENDS = {
    "local": "livedata.devices.local:LocalDeviceLink",
    "mqtt": "livedata.devices.mqtt:MqttDeviceLink",
}


def open_devices(url: str) -> DeviceLink:
    link: DeviceLink = load(SUPPORTED_BACKENDS, url, "devices")
    return link


__all__ = ["SUPPORTED_BACKENDS", "DeviceLink", "open_devices"]
