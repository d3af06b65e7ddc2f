"""Re-decoding and DBC provenance over HTTP.

::

    POST /api/resources/{orgId}/redecode        start a job (admin): {"machines": [...],
                                                "from": ms, "to": ms, "dbcId": id|null}
    GET  /api/resources/{orgId}/redecode        the organisation's latest job and its progress
    DELETE /api/resources/{orgId}/redecode      stop the running job (admin)
    GET  /api/resources/{orgId}/machines/{chassisId}/decoding
                                                which DBC version decoded which time range

``POST`` answers 202 with the job when it starts, 200 with the running job when the
same one is running already (idempotent), 409 while another one runs; ``dbcId``
``null`` decodes each machine with its current DBC.  The job
(:mod:`livedata.pipeline.redecode`) runs in the gateway's process; poll ``GET`` for
``state`` (``running``, ``done``, ``failed``, ``cancelled``), ``done``/``total``
(raw frame blobs), ``progress`` (0..1), ``values`` and ``errors``.

``decoding`` answers ``{"dbcId", "dbc", "ranges": [{"from", "to", "dbcId", "dbc",
"source"}]}``: the machine's current DBC and its timeline, oldest first
(``source``: ``ingest`` or ``redecode``; see :mod:`livedata.metadata.decoding`).
Ingest writes the end of its open range every 10 s, so ``to`` of the newest range
lags by that much.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from livedata.gateway.state import gateway_of
from livedata.metadata.decoding import machine_ranges
from livedata.pipeline.redecode import MAX_MACHINES

router = APIRouter(prefix="/api", tags=["machines"])


class RedecodeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    machines: list[str] = Field(min_length=1, max_length=MAX_MACHINES)
    from_: int = Field(alias="from", description="ms since the epoch")
    to: int = Field(description="ms since the epoch")
    dbcId: int | None = Field(None, description="the DBC file; null: each machine's current one")


@router.post(
    "/resources/{orgId}/redecode",
    status_code=202,
    summary="Re-decode a time range of machines from their kept raw frames (one job per org)",
)
async def start_redecode(request: Request, orgId: str, body: RedecodeBody) -> Response:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    job, started = await gw.redecoder.start(orgId, body.machines, body.from_, body.to, body.dbcId)
    return Response(
        orjson.dumps(job.to_dict()),
        status_code=202 if started else 200,
        media_type="application/json",
    )


@router.get("/resources/{orgId}/redecode", summary="The latest re-decoding job and its progress")
async def get_redecode(request: Request, orgId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    job = gw.redecoder.jobs.get(orgId)
    return {"job": job.to_dict() if job is not None else None}


@router.delete(
    "/resources/{orgId}/redecode",
    summary="Stop the running re-decoding job (what it replaced so far stays)",
)
async def cancel_redecode(request: Request, orgId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    return {"job": (await gw.redecoder.cancel(orgId)).to_dict()}


@router.get(
    "/resources/{orgId}/machines/{chassisId}/decoding",
    summary="Which DBC version decoded which time range of a machine",
)
async def machine_decoding(request: Request, orgId: str, chassisId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    info = await gw.catalog.require_machine(orgId, chassisId)
    ranges = await machine_ranges(gw.meta, orgId, chassisId)
    return {
        "dbcId": info.dbc_id,
        "dbc": info.dbc_name,
        "ranges": [r.to_dict() for r in ranges],
    }
