"""One error tree for livedata.

::

    LivedataError
    ├── ConfigError            a setting, flag or backend URL is wrong
    ├── InputError             something a device or client sent is wrong
    │   ├── DecodeError        a frame or payload cannot be decoded
    │   ├── NotFound           an unknown organisation, machine, message type, group, DBC
    │   └── Conflict           the request clashes with stored state (e.g. a duplicate name)
    └── BackendError           an engine (database, broker, bus) failed or is unreachable
        ├── BackendTimeout       ┐ how it failed, whichever engine: the engine did not
        ├── BackendUnavailable   │ answer in time / cannot be reached or the connection
        ├── BackendProtocolError ┘ was lost / its answer broke the protocol
        ├── StoreError
        │   ├── StoreTimeout           (also a BackendTimeout)
        │   ├── StoreUnavailable       (also a BackendUnavailable)
        │   └── StoreProtocolError     (also a BackendProtocolError)
        ├── BusError
        │   ├── BusTimeout             (also a BackendTimeout)
        │   ├── BusUnavailable         (also a BackendUnavailable)
        │   └── BusProtocolError       (also a BackendProtocolError)
        └── DeviceError        a direct method could not be completed by a machine
            ├── DeviceNotConnected   the machine is not connected (HTTP 404)
            └── DeviceTimeout        the machine did not answer in time (HTTP 504)

Backends translate their driver's exceptions into these at the boundary with
:func:`map_exceptions`, so the roles above them handle one tree.  Programming
errors (``ValueError``, ``TypeError`` raised by our own code or a driver given a
wrong argument) are not translated: they are bugs, and a retry loop waiting for a
``StoreError`` must not retry them forever.  ``InputError`` never stops the
pipeline: the sender gets the message, the counters go up, everything else
carries on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

ErrorMap = Mapping[type[BaseException] | tuple[type[BaseException], ...], type["LivedataError"]]
"""Driver exception type(s) → the error raised instead; the first entry that matches wins."""


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


class BackendTimeout(BackendError):
    """The engine did not answer in time."""


class BackendUnavailable(BackendError):
    """The engine cannot be reached, or the connection to it was lost."""


class BackendProtocolError(BackendError):
    """The engine's answer broke the protocol or could not be read."""


class StoreTimeout(StoreError, BackendTimeout):
    """The store did not answer in time."""


class StoreUnavailable(StoreError, BackendUnavailable):
    """The store cannot be reached, or the connection to it was lost."""


class StoreProtocolError(StoreError, BackendProtocolError):
    """The store's answer broke the protocol or could not be read."""


class BusTimeout(BusError, BackendTimeout):
    """The log or pub/sub did not answer in time."""


class BusUnavailable(BusError, BackendUnavailable):
    """The log or pub/sub cannot be reached, or the connection to it was lost."""


class BusProtocolError(BusError, BackendProtocolError):
    """The log's or pub/sub's answer broke the protocol or could not be read."""


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` (driver messages can span pages)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def map_exceptions(
    mapping: ErrorMap, what: str, detail: Callable[[BaseException], str] = describe
) -> Iterator[None]:
    """Re-raise a driver's exception as the project's: ``{what} failed: {detail(exc)}``.

    The first entry of ``mapping`` whose type matches wins, so list the narrow types
    first (``TimeoutError`` before ``OSError``, of which it is a subclass).  The
    driver's exception stays attached as ``__cause__``.  Exceptions that match no
    entry — a :class:`LivedataError` raised inside, a ``ValueError`` or ``TypeError``
    from a bug, a cancellation — pass through unchanged.
    """
    try:
        yield
    except LivedataError:
        raise
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(f"{what} failed: {detail(exc)}") from exc
        raise
