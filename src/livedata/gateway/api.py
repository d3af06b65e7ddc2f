"""The HTTP API: machines, history, groups, DBC files and their assignments.

Every error is ``{"error": {"code": …, "message": …}}`` with a 4xx status that
says whose fault it is (400 bad parameters, 404 unknown or foreign object, 409
conflict, 413 too large) or 503 when an engine is down.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, Field

from livedata.decode.can import CanDecoder
from livedata.errors import InputError, NotFound
from livedata.gateway.models_api import DBC_OPENAPI, dbc_upload
from livedata.gateway.security import principal_of
from livedata.metadata import GroupSpec, group_dict
from livedata.model import MsgType, valid_id
from livedata.store.base import Series

if TYPE_CHECKING:
    from livedata.runtime import Runtime

router = APIRouter(prefix="/api")

HISTORY_DEFAULT_MS = 120_000
HISTORY_MAX_SPAN_MS = 7 * 86_400_000
HISTORY_MAX_POINTS = 100_000
MAX_POINTS_LIMIT = 10_000
"""The largest ``maxPoints`` budget of the history API."""


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def check_msg_type(value: str) -> str:
    if value not in set(MsgType):
        raise InputError(f"unknown msgType {value!r}: use one of {', '.join(MsgType)}")
    return value


class GroupBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    msgType: MsgType
    fields: list[str] = Field(min_length=1, max_length=50)
    unit: str = Field("", max_length=32)
    model: str | None = Field(
        None, max_length=64, description="show the group for this model's machines only"
    )


class AssignBody(BaseModel):
    dbcId: int | None


@router.get("/orgs", summary="The caller's organisation")
async def list_orgs(request: Request) -> dict[str, Any]:
    org = await runtime(request).meta.require_org(principal_of(request).org)
    return {"orgs": [{"id": org.id, "name": org.name}]}


@router.get("/resources/{orgId}/machines", summary="Machines with their message types and fields")
async def list_machines(request: Request, orgId: str) -> dict[str, Any]:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    machines = []
    for machine in await rt.meta.list_machines(orgId):
        machines.append(await rt.describe_machine(orgId, machine.chassis_id))
    return {"machines": machines}


@router.get(
    "/resources/{orgId}/machines/{chassisId}", summary="One machine and its decoding counters"
)
async def get_machine(request: Request, orgId: str, chassisId: str) -> dict[str, Any]:
    rt = runtime(request)
    described = await rt.describe_machine(orgId, chassisId)
    described["decoding"] = rt.ingest.stats_for(orgId, chassisId).to_dict()
    return described


@router.get(
    "/resources/{orgId}/_common/datasets/{chassisId}/history",
    summary="History of a machine's fields, as ECharts time-axis series",
)
async def history(
    request: Request,
    orgId: str,
    chassisId: str,
    msgType: Annotated[str, Query(description="vehicle_can or client_raw_data")],
    fields: Annotated[str | None, Query(description="comma-separated; default all")] = None,
    from_: Annotated[int | None, Query(alias="from", description="ms since epoch")] = None,
    to: Annotated[int | None, Query(description="ms since epoch; default now")] = None,
    maxPoints: Annotated[
        int | None,
        Query(
            ge=2,
            le=MAX_POINTS_LIMIT,
            description="at most this many points per field: a field with more in the range "
            "comes back downsampled (min and max of at most maxPoints // 2 time buckets; "
            "numbers only)",
        ),
    ] = None,
) -> dict[str, Any]:
    """Raw points, or with ``maxPoints`` a budget per field.

    With ``maxPoints``: a range longer than ``maxPoints`` seconds (more points than the
    budget at the reference 1 Hz) is downsampled at once -- the store's min/max over at
    most ``maxPoints // 2`` equal time buckets (above 8 s the width is rounded up to
    whole 10 s or 1 min steps, so the store can answer from its rollups: up to 20 %
    fewer buckets), so every spike is kept in at most ``maxPoints`` points per field.  A shorter range is read raw with ``maxPoints + 1``
    points per field (cheap: the range is short); a field that got them all (faster
    than 1 Hz) is then downsampled, the others stay raw.  String values are left out
    of downsampled fields.  ``downsampled`` says whether any field was downsampled.
    """
    rt = runtime(request)
    check_msg_type(msgType)
    info = await rt.require_machine(orgId, chassisId)
    if fields is None:
        names = [f["name"] for f in await rt.catalog.fields(info, msgType)]
    else:
        names = [f for f in (part.strip() for part in fields.split(",")) if f]
        if not names:
            raise InputError("fields is empty: give a comma-separated list of field names")
        if len(names) > 500:
            raise InputError(f"{len(names)} fields; at most 500")
        bad = [f for f in names if not valid_id(f)]
        if bad:
            raise InputError(f"invalid field names: {bad[:5]}")
    end = to if to is not None else int(time.time() * 1000)
    start = from_ if from_ is not None else end - HISTORY_DEFAULT_MS
    if start > end:
        raise InputError(f"from ({start}) is after to ({end})")
    if end - start > HISTORY_MAX_SPAN_MS:
        raise InputError("the time range is longer than 7 days")
    if maxPoints is not None and end - start > maxPoints * 1000:
        series = await rt.store.downsample(
            orgId, chassisId, msgType, names, start, end, maxPoints // 2
        )
        return _history_body(msgType, start, end, series, downsampled=True)
    limit = HISTORY_MAX_POINTS if maxPoints is None else maxPoints + 1
    series = await rt.store.query(orgId, chassisId, msgType, names, start, end, limit=limit)
    downsampled = False
    if maxPoints is not None:
        over = [name for name, points in series.items() if len(points) > maxPoints]
        if over:
            downsampled = True
            series.update(
                await rt.store.downsample(
                    orgId, chassisId, msgType, over, start, end, maxPoints // 2
                )
            )
    return _history_body(msgType, start, end, series, downsampled=downsampled)


def _history_body(
    msg_type: str, start: int, end: int, series: Series, *, downsampled: bool
) -> dict[str, Any]:
    return {
        "msgType": msg_type,
        "from": start,
        "to": end,
        "downsampled": downsampled,
        "series": {name: [list(p) for p in points] for name, points in series.items()},
    }


@router.get("/resources/{orgId}/groups", summary="The organisation's line groups")
async def list_groups(request: Request, orgId: str) -> dict[str, Any]:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    return {"groups": [group_dict(g) for g in await rt.meta.list_groups(orgId)]}


def _spec(body: GroupBody) -> GroupSpec:
    bad = [f for f in body.fields if not valid_id(f)]
    if bad:
        raise InputError(f"invalid field names: {bad[:5]}")
    if len(set(body.fields)) != len(body.fields):
        raise InputError("fields contains duplicates")
    if body.model is not None and not valid_id(body.model):
        raise InputError(f"invalid model {body.model[:80]!r}")
    return GroupSpec(body.name.strip(), body.msgType.value, body.fields, body.unit, body.model)


@router.post("/resources/{orgId}/groups", status_code=201, summary="Create a line group")
async def create_group(request: Request, orgId: str, body: GroupBody) -> dict[str, Any]:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    return group_dict(await rt.meta.create_group(orgId, _spec(body)))


@router.put("/resources/{orgId}/groups/{groupId}", summary="Change a line group")
async def update_group(
    request: Request, orgId: str, groupId: str, body: GroupBody
) -> dict[str, Any]:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    return group_dict(await rt.meta.update_group(orgId, groupId, _spec(body)))


@router.delete(
    "/resources/{orgId}/groups/{groupId}", status_code=204, summary="Delete a line group"
)
async def delete_group(request: Request, orgId: str, groupId: str) -> Response:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    await rt.meta.delete_group(orgId, groupId)
    return Response(status_code=204)


def _dbc_dict(dbc: Any, decoder: CanDecoder | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": dbc.id, "name": dbc.name, "created": dbc.created_ms}
    if decoder is not None:
        out["signals"] = [s.to_dict() for s in decoder.signals()]
    return out


@router.get("/resources/{orgId}/dbc", summary="DBC files of the organisation")
async def list_dbc(request: Request, orgId: str) -> dict[str, Any]:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    return {"dbc": [_dbc_dict(d) for d in await rt.meta.list_dbc(orgId)]}


@router.post(
    "/resources/{orgId}/dbc",
    status_code=201,
    summary="Upload a DBC file: JSON {name, content}, multipart or the plain text",
    openapi_extra=DBC_OPENAPI,
)
async def upload_dbc(
    request: Request,
    orgId: str,
    name: Annotated[str | None, Query(description="the file's name (plain-text uploads)")] = None,
) -> dict[str, Any]:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    name, content, decoder = await dbc_upload(request, name)
    dbc = await rt.meta.add_dbc(orgId, name, content)
    return _dbc_dict(dbc, decoder)


@router.get("/resources/{orgId}/dbc/{dbcId}", summary="A DBC file's signals with unit, min, max")
async def get_dbc(request: Request, orgId: str, dbcId: int) -> dict[str, Any]:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    dbc = await rt.meta.get_dbc(orgId, dbcId)
    return _dbc_dict(dbc, CanDecoder.from_dbc(dbc.content))


@router.put("/resources/{orgId}/machines/{chassisId}/dbc", summary="Decode a machine with a DBC")
async def assign_machine(
    request: Request, orgId: str, chassisId: str, body: Annotated[AssignBody, Body()]
) -> dict[str, Any]:
    rt = runtime(request)
    await rt.require_machine(orgId, chassisId)
    await rt.meta.assign_machine_dbc(orgId, chassisId, body.dbcId)
    rt.catalog.invalidate()
    return await rt.describe_machine(orgId, chassisId)


@router.put("/resources/{orgId}/models/{model}/dbc", summary="Decode a machine model with a DBC")
async def assign_model(
    request: Request, orgId: str, model: str, body: Annotated[AssignBody, Body()]
) -> dict[str, Any]:
    rt = runtime(request)
    await rt.meta.require_org(orgId)
    if not valid_id(model):
        raise NotFound(f"model {model!r} not found")
    await rt.meta.assign_model_dbc(orgId, model, body.dbcId)
    rt.catalog.invalidate()
    return {"model": model, "dbcId": body.dbcId}
