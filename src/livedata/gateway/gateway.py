"""The gateway of one process: one object that owns every gateway-side service.

:func:`livedata.gateway.app.create_app` builds it from narrow parts of the
process (the composition root made them: see :class:`livedata.runtime.Runtime`):
the pub/sub (under the fan-out core this object makes), the store reader, the
metadata database and its catalog, the device link, the ingest port (and the device link HTTP ingest posts to), the
re-decoder, the alert role's rule refresh, and a supervisor that runs its
background tasks (``spawn``; the runtime).  Each service gets only the parts it
uses; services that talk to each other (a status change becomes a log-table row
and a Socket.IO ``device-update``) do so through this object's
:meth:`publish_row` and :meth:`emit_device_update`, so there is no construction
cycle and no registry: there is exactly one of each service per gateway, and
routers reach them through :func:`livedata.gateway.state.gateway_of` (the
``app.state.gateway`` of the request's app).

Owned here: :attr:`hub` (the fan-out core), :attr:`fleet` (the one fleet state
of the fleet summary and Socket.IO), :attr:`security`, :attr:`status`,
:attr:`viewers`, :attr:`watch` (SSE rings and log tables), :attr:`socket`
(Socket.IO), :attr:`alerts`, :attr:`transfers` and :attr:`broker` (broker files).

Tasks: :meth:`start` runs as the supervisor's ``on_started`` hook (after the
hooks added before ``create_app``, such as seeding the first admin, so the
``admin_token`` setting finds it) and hands every background task to
``spawn``: ``security-recheck``, the ``watch-*`` feeds, and with the ``gateway``
role ``alert-relay``, ``status-relay``, ``viewer-follow`` and (MQTT link)
``device-presence``.  They are restarted on failure and cancelled at stop by the
supervisor, and listed in ``/healthz``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, Protocol

from livedata.gateway.alerts_api import AlertsService
from livedata.gateway.commands import StatusService
from livedata.gateway.fanout import Fanout
from livedata.gateway.fleet import Fleet
from livedata.gateway.security import Security
from livedata.gateway.sio import SocketGateway
from livedata.gateway.transfer import Transfers
from livedata.gateway.viewers import ViewerFollower
from livedata.gateway.watch import WatchService
from livedata.provision import BrokerFiles

if TYPE_CHECKING:
    from livedata.bus.base import PubSub
    from livedata.catalog import Catalog
    from livedata.devices.base import DeviceLink
    from livedata.devices.http import HttpDeviceLink
    from livedata.metadata import Metadata
    from livedata.pipeline.ingest import Ingest
    from livedata.pipeline.redecode import Redecoder
    from livedata.settings import Settings
    from livedata.store.base import Store


class Supervisor(Protocol):
    """Runs a gateway's background tasks: restarted when they fail, cancelled at stop."""

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None: ...


class Gateway:
    """Security, watch, Socket.IO, status, alerts and fleet state of one gateway process."""

    def __init__(
        self,
        *,
        settings: Settings,
        roles: Collection[str],
        tasks: Supervisor,
        pubsub: PubSub,
        store: Store,
        meta: Metadata,
        catalog: Catalog,
        devices: DeviceLink,
        ingest: Ingest,
        http_devices: HttpDeviceLink,
        redecoder: Redecoder,
        refresh_alert_rules: Callable[[], Awaitable[None]] | None = None,
        **socketio: Any,
    ) -> None:
        """``refresh_alert_rules``: this process's alert role, when it runs one (a changed
        rule applies at once); ``socketio``: options of :class:`SocketGateway`."""
        self.settings = settings
        self.roles = frozenset(roles)
        self.tasks = tasks
        self.pubsub = pubsub
        self.store = store
        self.meta = meta
        self.catalog = catalog
        self.devices = devices
        self.ingest = ingest
        self.http_devices = http_devices
        """The device link HTTP ingest posts to (ingest reads it like any other link)."""
        self.redecoder = redecoder
        self.refresh_alert_rules = refresh_alert_rules
        self.hub = Fanout(
            pubsub,
            stall_seconds=settings.client_stall_seconds,
            queue_max=settings.client_queue,
        )
        """The fan-out core every live transport and in-process listener uses."""
        self.fleet = Fleet(self.hub, store, meta, catalog)
        self.security = Security(settings, meta, tasks, self.publish_row)
        self.status = StatusService(
            self.hub, store, meta, devices, pubsub, self.publish_row, self.emit_device_update
        )
        self.viewers = ViewerFollower(meta, catalog, devices, self.status)
        """Who watches which machine; real-time follows them where the organisation wants."""
        self.watch = WatchService(
            self.hub, store, meta, catalog, ingest, self.viewers, tasks, self.emit_device_update
        )
        socketio.setdefault("stall_seconds", settings.client_stall_seconds)
        self.socket = SocketGateway(
            self.security, self.viewers, catalog, self.hub, self.fleet, **socketio
        )
        self.alerts = AlertsService(meta, self.hub, self.publish_row, self.socket)
        self.transfers = Transfers()
        self.broker = BrokerFiles(settings, meta)
        """Writes the MQTT broker's files (one writer: its lock serialises rewrites)."""

    async def start(self) -> None:
        """Apply ``admin_token``, then hand the background tasks to the supervisor."""
        await self.security.start()
        await self.watch.start()
        if "gateway" in self.roles:
            self.tasks.spawn("alert-relay", self.alerts.relay.run)
            self.tasks.spawn("status-relay", self.status.relay.run)
            self.tasks.spawn("viewer-follow", self.viewers.run)
            if hasattr(self.devices, "presence_changes"):  # MQTT: push presence changes
                self.tasks.spawn("device-presence", self.status.presence_feed)

    def publish_row(self, org: str, table: str, row: dict[str, Any]) -> None:
        """Publish ``row`` to the log table ``table`` of ``org`` (its watch streams)."""
        self.watch.log_tables.publish(org, table, row)

    def emit_device_update(self, org: str, chassis: str, update: dict[str, Any]) -> None:
        """Send Socket.IO ``device-update`` to the clients subscribed to one device."""
        self.socket.push_device(org, chassis, update)
