"""The HTTP API: machines, history, groups, DBC files and their assignments.

Every error is ``{"error": {"code": …, "message": …}}`` with a 4xx status that
says whose fault it is (400 bad parameters, 404 unknown or foreign object, 409
conflict, 413 too large) or 503 when an engine is down.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, Field

from livedata.decode.can import CanDecoder
from livedata.decode.diff import diff_signals
from livedata.errors import InputError, NotFound
from livedata.gateway.models_api import DBC_OPENAPI, dbc_upload
from livedata.gateway.security import principal_of
from livedata.gateway.state import gateway_of
from livedata.metadata import GroupSpec, group_dict
from livedata.metadata.registry import org_dict
from livedata.model import MsgType, Name, Unit, valid_id
from livedata.store.base import Series

router = APIRouter(prefix="/api")

HISTORY_DEFAULT_MS = 120_000
HISTORY_MAX_SPAN_MS = 7 * 86_400_000
HISTORY_MAX_POINTS = 100_000
MAX_POINTS_LIMIT = 10_000
"""The largest ``maxPoints`` budget of the history API."""


def check_msg_type(value: str) -> str:
    if value not in set(MsgType):
        raise InputError(f"unknown msgType {value!r}: use one of {', '.join(MsgType)}")
    return value


MsgTypeQuery = Annotated[str, Query(description="vehicle_can or client_raw_data")]
FieldsQuery = Annotated[str | None, Query(description="comma-separated; default all")]
FromQuery = Annotated[int | None, Query(alias="from", description="ms since epoch")]
ToQuery = Annotated[int | None, Query(description="ms since epoch; default now")]
"""The query parameters of the history and export routes."""


def field_names(fields: str, limit: int) -> list[str]:
    """The names of a ``fields=a,b`` parameter: at least one, at most ``limit``, each valid."""
    names = [f for f in (part.strip() for part in fields.split(",")) if f]
    if not names:
        raise InputError("fields is empty: give a comma-separated list of field names")
    if len(names) > limit:
        raise InputError(f"{len(names)} fields; at most {limit}")
    bad = [f for f in names if not valid_id(f)]
    if bad:
        raise InputError(f"invalid field names: {bad[:5]}")
    return names


def time_range(
    from_: int | None, to: int | None, default_ms: int, max_span_ms: int
) -> tuple[int, int]:
    """``(start, end)`` of ``from``/``to``: ``to`` defaults to now, ``from`` to ``default_ms`` before."""
    end = to if to is not None else int(time.time() * 1000)
    start = from_ if from_ is not None else end - default_ms
    if start > end:
        raise InputError(f"from ({start}) is after to ({end})")
    if end - start > max_span_ms:
        raise InputError(f"the time range is longer than {max_span_ms // 86_400_000} days")
    return start, end


class GroupBody(BaseModel):
    name: Name
    msgType: MsgType
    fields: list[str] = Field(min_length=1, max_length=50)
    unit: Unit = ""
    model: str | None = Field(
        None, max_length=64, description="show the group for this model's machines only"
    )


class AssignBody(BaseModel):
    dbcId: int | None


@router.get("/orgs", summary="The caller's organisation")
async def list_orgs(request: Request) -> dict[str, Any]:
    org = await gateway_of(request).meta.require_org(principal_of(request).org)
    return {"orgs": [org_dict(org)]}


@router.get("/resources/{orgId}/machines", summary="Machines with their message types and fields")
async def list_machines(request: Request, orgId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    machines = []
    for machine in await gw.meta.list_machines(orgId):
        machines.append(await gw.catalog.describe_machine(orgId, machine.chassis_id))
    return {"machines": machines}


@router.get(
    "/resources/{orgId}/machines/{chassisId}", summary="One machine and its decoding counters"
)
async def get_machine(request: Request, orgId: str, chassisId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    described = await gw.catalog.describe_machine(orgId, chassisId)
    described["decoding"] = gw.ingest.stats_for(orgId, chassisId).to_dict()
    return described


@router.delete(
    "/resources/{orgId}/machines/{chassisId}/fields/{msgType}/{field}",
    status_code=204,
    summary="Forget a field a machine once sent (its stored values expire with retention)",
)
async def delete_field(
    request: Request, orgId: str, chassisId: str, msgType: str, field: str
) -> Response:
    """Frees a place under the per-machine field cap (``max_fields_per_type``)."""
    gw = gateway_of(request)
    await gw.catalog.require_machine(orgId, chassisId)
    if not await gw.catalog.forget_field(orgId, chassisId, msgType, field):
        raise NotFound(f"machine {chassisId!r} has no {msgType} field {field[:64]!r}")
    return Response(status_code=204)


@router.get(
    "/resources/{orgId}/_common/datasets/{chassisId}/history",
    summary="History of a machine's fields, as ECharts time-axis series",
)
async def history(
    request: Request,
    orgId: str,
    chassisId: str,
    msgType: MsgTypeQuery,
    fields: FieldsQuery = None,
    from_: FromQuery = None,
    to: ToQuery = None,
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
    gw = gateway_of(request)
    check_msg_type(msgType)
    info = await gw.catalog.require_machine(orgId, chassisId)
    if fields is None:
        names = [f["name"] for f in await gw.catalog.fields(info, msgType)]
    else:
        names = field_names(fields, 500)
    start, end = time_range(from_, to, HISTORY_DEFAULT_MS, HISTORY_MAX_SPAN_MS)
    if maxPoints is not None and end - start > maxPoints * 1000:
        series = await gw.store.downsample(
            orgId, chassisId, msgType, names, start, end, maxPoints // 2
        )
        return _history_body(msgType, start, end, series, downsampled=True)
    limit = HISTORY_MAX_POINTS if maxPoints is None else maxPoints + 1
    series = await gw.store.query(orgId, chassisId, msgType, names, start, end, limit=limit)
    downsampled = False
    if maxPoints is not None:
        over = [name for name, points in series.items() if len(points) > maxPoints]
        if over:
            downsampled = True
            series.update(
                await gw.store.downsample(
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
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    return {"groups": [group_dict(g) for g in await gw.meta.list_groups(orgId)]}


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
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    return group_dict(await gw.meta.create_group(orgId, _spec(body)))


@router.put("/resources/{orgId}/groups/{groupId}", summary="Change a line group")
async def update_group(
    request: Request, orgId: str, groupId: str, body: GroupBody
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    return group_dict(await gw.meta.update_group(orgId, groupId, _spec(body)))


@router.delete(
    "/resources/{orgId}/groups/{groupId}", status_code=204, summary="Delete a line group"
)
async def delete_group(request: Request, orgId: str, groupId: str) -> Response:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    await gw.meta.delete_group(orgId, groupId)
    return Response(status_code=204)


def dbc_versions(files: list[Any]) -> dict[int, tuple[int, int | None]]:
    """Per DBC file id: its version (1, 2, … among the uploads of its name, oldest first)
    and the id of the version before it."""
    latest: dict[str, tuple[int, int]] = {}
    versions: dict[int, tuple[int, int | None]] = {}
    for dbc in sorted(files, key=lambda d: d.id):
        number, previous = latest.get(dbc.name, (0, None))
        versions[dbc.id] = (number + 1, previous)
        latest[dbc.name] = (number + 1, dbc.id)
    return versions


def _dbc_dict(
    dbc: Any,
    decoder: CanDecoder | None = None,
    versions: dict[int, tuple[int, int | None]] | None = None,
) -> dict[str, Any]:
    version, previous = (versions or {}).get(dbc.id, (1, None))
    out: dict[str, Any] = {
        "id": dbc.id,
        "name": dbc.name,
        "version": version,
        "previousId": previous,
        "created": dbc.created_ms,
        "j1939": dbc.j1939,
        "separateSources": dbc.separate_sources,
    }
    if decoder is not None:
        out["protocol"] = "j1939" if decoder.j1939 else "can"
        out["signals"] = [s.to_dict() for s in decoder.signals()]
    return out


@router.get("/resources/{orgId}/dbc", summary="DBC files of the organisation")
async def list_dbc(request: Request, orgId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    files = await gw.meta.list_dbc(orgId)
    versions = dbc_versions(files)
    return {"dbc": [_dbc_dict(d, versions=versions) for d in files]}


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
    j1939: Annotated[
        bool | None,
        Query(description="match by J1939 parameter group (default: as the DBC says)"),
    ] = None,
    separateSources: Annotated[
        bool, Query(description="J1939: another source address writes <signal>.0x<SA> fields")
    ] = False,
) -> Response:
    """Parsed in a worker thread (a large file takes seconds; live streams go on).

    A file of a name already uploaded is a new version of it (``version``, ``previousId``;
    ``GET …/dbc/{id}/diff`` says what changed) -- unless it is the same as the current
    version (same text and options): then that version is answered with 200 and nothing
    is stored."""
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    upload = await dbc_upload(request, name, j1939, separateSources)
    current = await gw.meta.find_dbc(orgId, upload.name)
    same = (upload.content, upload.j1939, upload.separate_sources)
    if current is not None and (current.content, current.j1939, current.separate_sources) == same:
        dbc, status = current, 200
    else:
        dbc, status = (
            await gw.meta.add_dbc(
                orgId,
                upload.name,
                upload.content,
                j1939=upload.j1939,
                separate_sources=upload.separate_sources,
            ),
            201,
        )
    versions = dbc_versions(await gw.meta.list_dbc(orgId))
    return _json(_dbc_dict(dbc, upload.decoder, versions), status)


@router.get("/resources/{orgId}/dbc/{dbcId}", summary="A DBC file's signals with unit, min, max")
async def get_dbc(request: Request, orgId: str, dbcId: int) -> Response:
    """The parsed file comes from the catalog's cache (parsed once, off the event loop)."""
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    dbc = await gw.meta.get_dbc(orgId, dbcId)
    versions = dbc_versions(await gw.meta.list_dbc(orgId))
    return _json(_dbc_dict(dbc, await gw.catalog.decoder(dbc), versions))


def _json(body: dict[str, Any], status: int = 200) -> Response:
    """``body`` serialised by orjson at once (FastAPI's encoder takes ~0.1 s per 10,000 signals)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get(
    "/resources/{orgId}/dbc/{dbcId}/diff",
    summary="Signals added, removed and changed since the previous version (or another file)",
)
async def diff_dbc(
    request: Request, orgId: str, dbcId: int, against: Annotated[int | None, Query()] = None
) -> dict[str, Any]:
    """``against`` defaults to the previous upload of the same name (the file's last
    version); with none, every signal is ``added``."""
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    new = await gw.meta.get_dbc(orgId, dbcId)
    if against is None:
        earlier = [d for d in await gw.meta.list_dbc(orgId) if d.name == new.name and d.id < dbcId]
        against = earlier[-1].id if earlier else None
    old = await gw.meta.get_dbc(orgId, against) if against is not None else None
    diff = diff_signals(
        await gw.catalog.decoder(old) if old is not None else None,
        await gw.catalog.decoder(new),
    )
    return {"from": against, "to": dbcId, **diff}


@router.put("/resources/{orgId}/machines/{chassisId}/dbc", summary="Decode a machine with a DBC")
async def assign_machine(
    request: Request, orgId: str, chassisId: str, body: Annotated[AssignBody, Body()]
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.catalog.require_machine(orgId, chassisId)
    await gw.meta.assign_machine_dbc(orgId, chassisId, body.dbcId)
    gw.catalog.invalidate()
    return await gw.catalog.describe_machine(orgId, chassisId)


@router.put("/resources/{orgId}/models/{model}/dbc", summary="Decode a machine model with a DBC")
async def assign_model(
    request: Request, orgId: str, model: str, body: Annotated[AssignBody, Body()]
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    if not valid_id(model):
        raise NotFound(f"model {model!r} not found")
    await gw.meta.assign_model_dbc(orgId, model, body.dbcId)
    gw.catalog.invalidate()
    return {"model": model, "dbcId": body.dbcId}
