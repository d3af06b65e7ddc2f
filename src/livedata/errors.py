"""One error tree for livedata.

::

    LivedataError
    ├── ConfigError            a setting, flag or backend URL is wrong
    ├── InputError             something a device or client sent is wrong
    │   ├── DecodeError        a frame or payload cannot be decoded
    │   ├── NotFound           an unknown organisation, machine, message type, group, DBC
    │   └── Conflict           the request clashes with stored state (e.g. a duplicate name)
    └── BackendError           an engine (database, broker, bus) failed or is unreachable
        ├── StoreError
        ├── BusError
        └── DeviceError        a direct method could not be completed by a machine
            ├── DeviceNotConnected   the machine is not connected (HTTP 404)
            └── DeviceTimeout        the machine did not answer in time (HTTP 504)

Backends translate their driver's exceptions into these at the boundary, so the
roles above them handle one tree.  ``InputError`` never stops the pipeline: the
sender gets the message, the counters go up, everything else carries on.
"""

from __future__ import annotations


class LivedataError(Exception):
    """Base of every error livedata raises on purpose."""


class ConfigError(LivedataError):
    """A setting, command-line flag or backend URL is wrong."""


class InputError(LivedataError):
    """Something a device or client sent is wrong; it is reported, not fatal."""

    code = "bad_request"


class DecodeError(InputError):
    """A CAN frame or a payload cannot be decoded."""

    code = "decode_error"


class NotFound(InputError):
    """The organisation, machine, message type or object does not exist (for this caller)."""

    code = "not_found"


class Conflict(InputError):
    """The request clashes with what is stored."""

    code = "conflict"


class BackendError(LivedataError):
    """An engine failed or is unreachable."""


class StoreError(BackendError):
    """The telemetry store failed."""


class BusError(BackendError):
    """The log or pub/sub failed."""


class DeviceError(BackendError):
    """A direct method to a machine could not be completed."""

    code = "device_error"


class DeviceNotConnected(DeviceError):
    """The machine is not connected to its device link (now, or within the connect timeout)."""

    code = "DeviceNotConnected"


class DeviceTimeout(DeviceError):
    """The machine received no request or sent no answer within the response timeout."""

    code = "GatewayTimeout"
