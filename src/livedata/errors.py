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
        └── BusError

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
