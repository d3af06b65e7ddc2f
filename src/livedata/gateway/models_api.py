"""Machine models and the signal catalog of their DBC files (FleetWise's "signal catalog").

::

    GET  /api/resources/{orgId}/models                    models, their DBC, their machines
    POST /api/resources/{orgId}/models                    create a model (admin)
    GET  /api/resources/{orgId}/models/{model}/signals    the model's signal catalog, ?q=
    GET  /api/resources/{orgId}/dbc/{dbcId}/signals       a DBC file's signal catalog, ?q=

A catalog entry is one signal with its message, CAN id, J1939 PGN, unit, range,
resolution, offset, value table and comment (:func:`livedata.signals.signal_catalog`);
``q`` keeps the signals whose name, message, unit or comment contains it (any case).
DBC files are parsed in a worker thread, off the event loop.  Uploads of DBC files
(:func:`dbc_upload`, used by ``POST …/dbc``) take JSON, multipart or the plain text;
an invalid file's error names cantools' line and reason, and a file that defines
one CAN id twice is refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from livedata.decode.can import CanDecoder, format_can_id
from livedata.errors import DecodeError, InputError, NotFound
from livedata.gateway.state import gateway_of
from livedata.gateway.uploads import json_body, upload_text
from livedata.metadata.registry import create_model, list_models
from livedata.model import valid_id
from livedata.signals import signal_catalog

if TYPE_CHECKING:
    from livedata.catalog import Catalog
    from livedata.metadata import Metadata

router = APIRouter(prefix="/api", tags=["models"])

MAX_DBC_BYTES = 2 * 1024 * 1024
MAX_DBC_SIGNALS = 10_000
"""Signals one DBC file may define (a full J1939 digital annex has about 6,000)."""
DBC_OPENAPI = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["name", "content"],
                    "properties": {"name": {"type": "string"}, "content": {"type": "string"}},
                },
                "example": {"name": "loader.dbc", "content": 'VERSION ""\n…'},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "text/plain": {"schema": {"type": "string"}, "example": 'VERSION ""\n…'},
        }
    }
}
"""The request body of ``POST …/dbc`` (read by hand, so described here)."""


class DbcBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    content: str = Field(min_length=1, max_length=MAX_DBC_BYTES)
    j1939: bool | None = None
    """Match by J1939 parameter group; ``null``: as the DBC says (``ProtocolType``, ``VFrameFormat``)."""
    separateSources: bool = False
    """J1939: frames from another source address write ``<signal>.0x<SA>`` fields."""


@dataclass(frozen=True, slots=True)
class DbcUpload:
    """An uploaded DBC file, parsed and checked, with its J1939 options."""

    name: str
    content: str
    decoder: CanDecoder
    j1939: bool | None
    separate_sources: bool


class ModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, examples=["WL900"])


async def dbc_upload(
    request: Request, name: str | None, j1939: bool | None = None, separate_sources: bool = False
) -> DbcUpload:
    """An uploaded DBC file, checked (see module); a JSON body carries its own options."""
    upload = await upload_text(request, MAX_DBC_BYTES, "DBC")
    if upload is None:
        body = await json_body(request, DbcBody)
        name, content = body.name, body.content
        j1939, separate_sources = body.j1939, body.separateSources
    else:
        name, content = name or upload[0] or "", upload[1]
    name = name.strip()
    if not name or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise InputError("give the DBC file a name (?name=… or the uploaded file's name)")
    try:
        decoder = await asyncio.to_thread(
            CanDecoder.from_dbc, content, j1939=j1939, separate_sources=separate_sources
        )
    except DecodeError as exc:
        raise InputError(str(exc)) from None  # "invalid DBC: …", cantools' words
    check_dbc(decoder)
    return DbcUpload(name, content, decoder, j1939, separate_sources)


def check_dbc(decoder: CanDecoder) -> None:
    """Refuse a DBC whose messages share an id (only one could ever decode) or that
    defines more than :data:`MAX_DBC_SIGNALS` signals."""
    first: dict[tuple[int, bool], str] = {}
    clashes = []
    for message in decoder.database.messages:
        key = (message.frame_id, bool(message.is_extended_frame))
        if key in first:
            can_id = format_can_id(*key)
            clashes.append(f"{can_id} ({first[key]} and {message.name})")
        else:
            first[key] = message.name
    if clashes:
        raise InputError(f"invalid DBC: duplicate message ids {', '.join(clashes[:5])}")
    count = len(decoder.signals())
    if count > MAX_DBC_SIGNALS:
        raise InputError(f"the DBC file has {count} signals; at most {MAX_DBC_SIGNALS}")


def _search(signals: list[dict[str, Any]], q: str | None) -> list[dict[str, Any]]:
    if not q:
        return signals
    needle = q.strip().lower()
    return [
        s
        for s in signals
        if any(needle in str(s[k]).lower() for k in ("name", "message", "unit", "comment"))
    ]


async def _catalog(
    meta: Metadata, catalog: Catalog, org: str, dbc_id: int
) -> tuple[Any, list[dict[str, Any]]]:
    dbc = await meta.get_dbc(org, dbc_id)
    decoder = await catalog.decoder(dbc)
    return dbc, signal_catalog(decoder.database)


Search = Annotated[
    str | None,
    Query(
        max_length=100,
        description="only signals whose name, message, unit or comment contains this (any case)",
    ),
]


@router.get("/resources/{orgId}/models", summary="Machine models, their DBC and their machines")
async def get_models(request: Request, orgId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    files = {d.id: d.name for d in await gw.meta.list_dbc(orgId)}
    return {
        "models": [
            {
                "name": model.name,
                "dbcId": model.dbc_id,
                "dbc": files.get(model.dbc_id) if model.dbc_id is not None else None,
                "machines": machines,
            }
            for model, machines in await list_models(gw.meta, orgId)
        ]
    }


@router.post("/resources/{orgId}/models", status_code=201, summary="Create a machine model")
async def post_model(request: Request, orgId: str, body: ModelBody) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    model = await create_model(gw.meta, orgId, body.name)
    return {"name": model.name, "dbcId": None, "dbc": None, "machines": []}


@router.get(
    "/resources/{orgId}/models/{model}/signals",
    summary="Signal catalog of a model: every signal of its DBC with id/PGN, unit, range",
)
async def model_signals(
    request: Request, orgId: str, model: str, q: Search = None
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    found = None
    if valid_id(model):
        found = next((m for m, _ in await list_models(gw.meta, orgId) if m.name == model), None)
    if found is None:
        raise NotFound(f"model {model!r} not found")
    if found.dbc_id is None:
        return {"model": model, "dbc": None, "signals": []}
    dbc, signals = await _catalog(gw.meta, gw.catalog, orgId, found.dbc_id)
    return {"model": model, "dbc": {"id": dbc.id, "name": dbc.name}, "signals": _search(signals, q)}


@router.get(
    "/resources/{orgId}/dbc/{dbcId}/signals",
    summary="Signal catalog of a DBC file: every signal with id/PGN, unit, range, comment",
)
async def dbc_signals(request: Request, orgId: str, dbcId: int, q: Search = None) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    dbc, signals = await _catalog(gw.meta, gw.catalog, orgId, dbcId)
    return {"dbc": {"id": dbc.id, "name": dbc.name}, "signals": _search(signals, q)}
