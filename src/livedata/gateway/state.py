"""How a route finds its gateway: the one :class:`~livedata.gateway.gateway.Gateway` of its app.

:func:`~livedata.gateway.app.create_app` keeps the gateway it built in
``app.state.gateway``; every router reads its parts from there (never from the
runtime, nor from a module-level registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from livedata.gateway.gateway import Gateway


def gateway_of(connection: HTTPConnection) -> Gateway:
    """The gateway of the app serving ``connection`` (a request or a WebSocket)."""
    gateway: Gateway = connection.app.state.gateway
    return gateway
