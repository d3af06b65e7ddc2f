"""HTTP ingest for producers that cannot speak MQTT: the same payloads, one message per request.

``POST /api/ingest/{orgId}/{chassisId}/{msgType}`` with the body encoded as in
:mod:`livedata.codec` (``docs/device-protocol.md``): ``vehicle_can`` as
``application/octet-stream`` (the binary frame batch), ``client_raw_data`` as
``application/json``.  The organisation and machine come from the URL only; a
payload carries no identity.

Answers (errors are ``{"error": {"code", "message"}}``):

- **202** ``{"accepted": true, "points": n}`` once the record is in the store and the
  log (the same moment an MQTT message is acknowledged), so a producer may drop its
  copy.  ``points`` is the number of values decoded.
- **400** ``decode_error``: the body cannot be decoded (wrong encoding, truncated
  batch, wrong version…); counted as rejected in the machine's decoding counters
  (``GET /api/resources/{orgId}/machines/{chassisId}``).  ``rejected``: decodable
  but unusable (e.g. no DBC assigned to the machine), counted likewise.
  ``bad_request``: an unknown ``msgType``.
- **401** ``unauthenticated``: no ``Authorization: Bearer <the machine's secret>``,
  a wrong one, another machine's, a user's API token, or an unknown organisation or
  machine (no secret can match those; the answer is the same, so ids do not leak).
  Checked before the body is read.
- **413** ``too_large``: a body over 1 MiB, refused from ``Content-Length`` or while
  reading, without reading the rest.
- **415** ``unsupported_media_type``: a ``Content-Type`` other than the one of the
  message type (no ``Content-Type`` at all is accepted).
- **503** ``unavailable``: this process does not run the ingest role; or ingest is
  busy: the request was not taken within 10 s (its queue stayed full, the store being
  slow or down); or the record was queued but not stored within 10 s (the store is
  down and being retried).  The two last come with ``Retry-After`` (seconds); a
  queued record will still be stored, and resending is safe, as writes are idempotent.

Security: each machine has its own secret (``livedata devices secret ORG CHASSIS`` or
``POST /api/resources/{orgId}/machines/{chassisId}/secret``); the request carries it as
``Authorization: Bearer …`` and it is checked against the machine in the URL by the
gateway's security middleware (:mod:`livedata.gateway.security`).

Each request is a delivery of a device link (:class:`~livedata.devices.http.HttpDeviceLink`,
the same interface as the MQTT and in-process links): ingest takes concurrent requests
in one batch through its one entry point (:meth:`~livedata.pipeline.ingest.Ingest.handle_many`),
which says why a message was refused (:class:`~livedata.pipeline.ingest.Refused`).

Under stress: the link's queue and ingest's are bounded, so a slow store makes requests
wait rather than memory grow; each request holds at most 1 MiB.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from livedata.codec import CONTENT_TYPES, MAX_PAYLOAD
from livedata.errors import NotFound
from livedata.gateway.state import gateway_of
from livedata.model import MsgType, Record
from livedata.pipeline.ingest import Refused

__all__ = ["DURABLE_TIMEOUT_S", "QUEUE_TIMEOUT_S", "RETRY_AFTER_S", "ingest_router"]

DURABLE_TIMEOUT_S = 10.0
"""How long a request waits for its record to be stored before answering 503."""
QUEUE_TIMEOUT_S = 10.0
"""How long a request waits for ingest to take it (a full queue) before answering 503."""
RETRY_AFTER_S = 5
"""The ``Retry-After`` of a 503 for a busy or slow ingest."""

ingest_router = APIRouter(prefix="/api", tags=["ingest"])

_MSG_TYPES = {t.value: t for t in MsgType}


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _retry_later(message: str) -> JSONResponse:
    return _error(503, "unavailable", message, {"Retry-After": str(RETRY_AFTER_S)})


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


_BODY = {
    "required": True,
    "content": {
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "example": "vehicle_can frame batch, see docs/device-protocol.md",
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["v", "ts", "values"],
                "properties": {
                    "v": {"type": "integer", "enum": [1]},
                    "ts": {"type": "integer", "description": "ms since the epoch"},
                    "kind": {"type": "string", "enum": ["realTime", "backfill"]},
                    "values": {"type": "object"},
                },
            },
        },
    },
}


@ingest_router.post(
    "/ingest/{orgId}/{chassisId}/{msgType}",
    status_code=202,
    summary="Send one device message over HTTP (vehicle_can binary batch or client_raw_data JSON)",
    openapi_extra={"requestBody": _BODY},
    responses={
        400: {"description": "undecodable or unusable payload, unknown msgType"},
        404: {"description": "unknown organisation or machine"},
        413: {"description": "body over 1 MiB"},
        415: {"description": "wrong Content-Type for the message type"},
        503: {"description": "not stored in time, or no ingest role here"},
    },
)
async def ingest_http(request: Request, orgId: str, chassisId: str, msgType: str) -> JSONResponse:
    gw = gateway_of(request)
    try:
        await gw.catalog.require_machine(orgId, chassisId)
    except NotFound as exc:
        return _error(404, exc.code, str(exc))
    msg_type = _MSG_TYPES.get(msgType)
    if msg_type is None:
        return _error(
            400, "bad_request", f"unknown msgType {msgType[:64]!r}: use one of {', '.join(MsgType)}"
        )
    if "ingest" not in gw.roles:
        return _error(503, "unavailable", "this process does not run the ingest role")
    expected = CONTENT_TYPES[msg_type]
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media = content_type.partition(";")[0].strip().lower()
        if media != expected:
            return _error(
                415,
                "unsupported_media_type",
                f"{msgType} is sent as {expected}, not {media or 'an empty Content-Type'}",
            )
    body = await _read_capped(request, MAX_PAYLOAD)
    if body is None:
        return _error(413, "too_large", f"the body is larger than {MAX_PAYLOAD} bytes")
    try:
        posted = await gw.http_devices.post(orgId, chassisId, msg_type, body, QUEUE_TIMEOUT_S)
    except TimeoutError:
        return _retry_later(
            f"ingest is busy: not taken within {QUEUE_TIMEOUT_S:g} s; retry after "
            f"{RETRY_AFTER_S} s (resending is safe)"
        )
    outcome = posted.outcome
    if isinstance(outcome, Refused):
        return _error(400, outcome.code, outcome.reason)
    assert isinstance(outcome, Record)
    try:
        await asyncio.wait_for(posted.stored.wait(), DURABLE_TIMEOUT_S)
    except TimeoutError:
        return _retry_later(
            f"accepted but not stored within {DURABLE_TIMEOUT_S:g} s; it will be stored, "
            "and resending is safe",
        )
    return JSONResponse({"accepted": True, "points": len(outcome.values)}, status_code=202)
