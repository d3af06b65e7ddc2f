"""A machine's diagnostic trouble codes over HTTP.

``GET /api/resources/{orgId}/machines/{chassisId}/dtcs?limit=50`` answers
``{"active": [...], "recent": [...]}``: the DTCs active now (oldest first) and the
``limit`` most recently cleared (newest first, at most 500).  Each is ``{"sa",
"spn", "fmi", "fmiText", "oc", "lamp", "since", "clearedAt", "active", "name"}``:
``lamp`` holds the lamp status of the DM1 that last changed it, ``since`` and
``clearedAt`` are ms since the epoch, ``name`` is the SPN's name from the
machine's DBC (an ``SPN`` signal attribute) or from livedata's table of common
SPNs, else ``null``.  The lifecycle is kept by the ingest role
(:mod:`livedata.pipeline.dtcs`); any user of the organisation may read it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from livedata.gateway.state import gateway_of
from livedata.metadata.dtcs import MAX_RECENT, DtcLog, dtc_dict

router = APIRouter(prefix="/api", tags=["machines"])


@router.get(
    "/resources/{orgId}/machines/{chassisId}/dtcs",
    summary="Active and recently cleared diagnostic trouble codes (J1939 DM1) of a machine",
)
async def machine_dtcs(
    request: Request,
    orgId: str,
    chassisId: str,
    limit: int = Query(50, ge=1, le=MAX_RECENT),
) -> dict[str, Any]:
    gw = gateway_of(request)
    info = await gw.catalog.require_machine(orgId, chassisId)
    names = info.decoder.spn_names() if info.decoder is not None else {}
    active, cleared = await DtcLog(gw.meta).listing(orgId, chassisId, limit)
    return {
        "active": [dtc_dict(r, names) for r in active],
        "recent": [dtc_dict(r, names) for r in cleared],
    }
