"""The agent's MQTT connection: a message counts as sent only when the broker took it.

:class:`AckedDevice` is :class:`~livedata.devices.mqtt.MqttDevice` (presence, Last Will,
direct methods, reconnect with backoff) with a stricter :meth:`AckedDevice.publish`:
it returns only after the broker's PUBACK, **and** only if that PUBACK's MQTT 5
reason code says the message went somewhere.  Otherwise it raises
:class:`NotDelivered` and the caller (the agent) keeps the message in its spool:

- *no PUBACK within* ``send_timeout`` — a silent or overloaded broker, a half-open
  connection;
- *the connection was lost before the PUBACK* — fails at once, without waiting for
  the timeout: the broker may or may not have the message, so it is sent again
  later (stores write idempotently, so a duplicate is harmless; a loss is not);
- *reason code 0x10 "No matching subscribers"* — the broker accepted the message and
  **dropped** it because nothing subscribes to it.  This is what happens after a
  Mosquitto restart: Mosquitto 2.0 (measured on 2.0.11) does not restore a persistent session's *shared*
  subscription (ingest's ``$share/ingest/…``) from its persistence file, so until
  the server's link reconnects and subscribes again (its own backoff, up to 30 s),
  every message is acknowledged with 0x10 and lost.  aiomqtt's ``publish`` ignores
  PUBACK reason codes, which is why the agent does not use it for telemetry;
- *0x87 "Not authorized"* (an ACL that does not, or not yet, let this device write
  the topic) and *0x97 "Quota exceeded"*: taken as passing conditions an operator or
  time fixes, so the message is kept too.

Any other error reason code (≥ 0x80: "Packet too large", "Payload format invalid",
"Topic name invalid", "Unspecified error" …) says the broker will refuse this very
message again: :class:`Refused` (a :class:`NotDelivered` with ``permanent`` set), and
the agent drops the message (counted and logged as an error) instead of letting it
block the spool behind it forever.

Consequence: with no ingest subscribed at all, or a broker that does not authorize
this device, nothing the agent collects is lost — it stays in the bounded spool (whose oldest
rows are dropped, counted, when it is full).  A broker that has some *other*
subscriber to the topic (a debugging ``mosquitto_sub -t 'livedata/#'``, say) answers
0x00 although ingest is not there; the agent cannot tell.

Telemetry is published with paho-mqtt's ``publish`` on the aiomqtt client's paho
client, and PUBACKs are read by wrapping that client's ``on_publish`` and
``on_disconnect`` callbacks (aiomqtt's own keep running).  aiomqtt runs paho's
network I/O on the event loop, so the callbacks run on the loop's thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from livedata.devices.mqtt import MqttDevice, telemetry_topic
from livedata.errors import BackendError

__all__ = [
    "NO_MATCHING_SUBSCRIBERS",
    "TRANSIENT_REFUSALS",
    "AckedDevice",
    "NotDelivered",
    "Refused",
]

NO_MATCHING_SUBSCRIBERS = 0x10
"""MQTT 5 PUBACK reason: accepted, but nothing subscribes (the message is dropped)."""


TRANSIENT_REFUSALS = frozenset((NO_MATCHING_SUBSCRIBERS, 0x87, 0x97))
"""PUBACK reason codes after which the same message is worth sending again later."""


class NotDelivered(BackendError):
    """The broker did not take a message (see the module doc); send it again later."""

    permanent = False


class Refused(NotDelivered):
    """The broker refused this message for good (its PUBACK reason code says so)."""

    permanent = True


class _Acks:
    """The PUBACKs of one connection (one aiomqtt client), by packet id."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self._paho: paho.Client = client._client
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._lost: str | None = None
        inner_publish: Any = self._paho.on_publish
        inner_disconnect: Any = self._paho.on_disconnect

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
            future = self._waiting.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(int(getattr(reason, "value", 0)))
            if inner_publish is not None:
                inner_publish(c, userdata, mid, reason, properties)

        def on_disconnect(
            c: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None
        ) -> None:
            self.lose(f"connection lost before the PUBACK ({reason})")
            if inner_disconnect is not None:
                inner_disconnect(c, userdata, flags, reason, properties)

        self._paho.on_publish = on_publish
        self._paho.on_disconnect = on_disconnect
        if not self._paho.is_connected():
            self.lose("not connected")

    def lose(self, why: str) -> None:
        """Fail every message waiting for its PUBACK on this connection, and later ones."""
        self._lost = why
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(NotDelivered(why))

    async def publish(self, topic: str, payload: bytes, wait_s: float) -> None:
        if self._lost is not None:
            raise NotDelivered(self._lost)
        info = self._paho.publish(topic, payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise NotDelivered(f"publish refused by the MQTT client: {paho.error_string(info.rc)}")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[info.mid] = future
        try:
            async with asyncio.timeout(wait_s):
                code = await future
        except TimeoutError:
            raise NotDelivered(f"no PUBACK within {wait_s:g} s") from None
        finally:
            self._waiting.pop(info.mid, None)
        if code == NO_MATCHING_SUBSCRIBERS:
            raise NotDelivered("the broker has no subscriber for it (ingest not subscribed)")
        if code in TRANSIENT_REFUSALS:
            raise NotDelivered(f"the broker refused it: {_reason_name(code)} (0x{code:02X})")
        if code >= 0x80:
            raise Refused(f"the broker refused it: {_reason_name(code)} (0x{code:02X})")


def _reason_name(code: int) -> str:
    try:
        return str(ReasonCode(PacketTypes.PUBACK, identifier=code))
    except Exception:  # an identifier paho does not know
        return "unknown reason"


class AckedDevice(MqttDevice):
    """An :class:`MqttDevice` whose :meth:`publish` waits for a PUBACK that means delivered."""

    def __init__(self, *args: Any, send_timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_timeout = send_timeout
        self._acks: _Acks | None = None

    async def publish(self, msg_type: str, payload: bytes) -> None:
        """Publish one encoded telemetry payload at QoS 1; :class:`NotDelivered` unless taken.

        Never waits for a connection: while disconnected it raises at once.
        """
        client = self._client
        if client is None:
            raise NotDelivered(f"device {self.client_id} is not connected to the MQTT broker")
        acks = self._acks
        if acks is None or acks.client is not client:
            if acks is not None:
                acks.lose("connection replaced before the PUBACK")
            acks = self._acks = _Acks(client)
        await acks.publish(
            telemetry_topic(self.tenant, self.chassis, msg_type), payload, self.send_timeout
        )
