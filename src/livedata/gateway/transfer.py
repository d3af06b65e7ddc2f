"""Data in and out over HTTP: upload a recorded CAN log, download a range as CSV or Parquet.

``POST /api/resources/{orgId}/machines/{chassisId}/import?filename=run.blf[&start=ms]``
(admin): the body is the log file itself (any ``Content-Type``), imported with
:func:`livedata.pipeline.backfill.import_log` as backfill; the answer is the import
summary.  The upload is spooled to a temporary file as it arrives and refused with
413 beyond the gateway's body cap (``max_body_bytes``: larger logs go through
``livedata import``); a file that cannot be read is 400 naming the line or byte.

``GET /api/resources/{orgId}/_common/datasets/{chassisId}/export?msgType=…&fields=…&from=…&to=…&format=csv|parquet[&maxPoints=N]``
(viewer): a streamed download (:mod:`livedata.pipeline.export`), ``Content-Disposition:
attachment``.  Defaults: every field, the last hour, CSV, raw.

Limits, each a 400 or 429 with a message that says which: at most
:data:`MAX_EXPORT_FIELDS` fields, a range of at most :data:`MAX_EXPORT_SPAN_MS`,
``maxPoints`` between 2 and :data:`MAX_EXPORT_POINTS`, and per user at most
:data:`EXPORTS_PER_USER` exports and :data:`IMPORTS_PER_USER` imports at a time
(429 ``busy``), so one user cannot occupy the store for everybody.
"""

from __future__ import annotations

import tempfile
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from livedata.errors import InputError
from livedata.gateway.api import (
    FieldsQuery,
    FromQuery,
    MsgTypeQuery,
    ToQuery,
    check_msg_type,
    field_names,
    time_range,
)
from livedata.gateway.security import principal_of
from livedata.gateway.server import error_body
from livedata.gateway.state import gateway_of
from livedata.pipeline.backfill import FORMATS as LOG_FORMATS
from livedata.pipeline.backfill import import_log
from livedata.pipeline.export import FORMATS, Export

router = APIRouter(prefix="/api", tags=["data in and out"])

MAX_EXPORT_FIELDS = 200
MAX_EXPORT_SPAN_MS = 31 * 86_400_000
MAX_EXPORT_POINTS = 1_000_000
EXPORT_DEFAULT_MS = 3_600_000
EXPORTS_PER_USER = 2
IMPORTS_PER_USER = 1
_MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


class Transfers:
    """Imports and exports running per user (for the per-user limits); one per app."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, int], int] = {}

    def acquire(self, kind: str, user_id: int, limit: int) -> Callable[[], None]:
        """Take one of ``limit`` slots of ``kind`` for the user, or raise :class:`Busy`.

        Returns the release function; calling it more than once releases once.
        """
        key = (kind, user_id)
        if self._running.get(key, 0) >= limit:
            raise Busy(f"at most {limit} {kind}s at a time per user; wait for the others to finish")
        self._running[key] = self._running.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._running[key] -= 1
                if not self._running[key]:
                    del self._running[key]

        return release


class Busy(Exception):
    pass


def _error(status: int, code: str, message: str) -> Response:
    return Response(error_body(code, message), status_code=status, media_type="application/json")


async def _spool(request: Request, path: Path, limit: int) -> bool:
    """Write the request body to ``path``; ``False`` once it exceeds ``limit`` bytes."""
    size = 0
    with path.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return False
            out.write(chunk)
    if size == 0:
        raise InputError("the body is empty: send the log file as the request body")
    return True


@router.post(
    "/resources/{orgId}/machines/{chassisId}/import",
    summary="Import a recorded CAN log into the machine's history (backfill)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_log(
    request: Request,
    orgId: str,
    chassisId: str,
    filename: Annotated[
        str, Query(max_length=200, description="the file's name; its suffix is the format")
    ],
    start: Annotated[
        int | None, Query(description="recording start (ms) for relative timestamps")
    ] = None,
) -> Response:
    gw = gateway_of(request)
    info = await gw.catalog.require_machine(orgId, chassisId)
    if info.decoder is None:
        raise InputError(f"no DBC file assigned to machine {chassisId!r}: assign one first")
    suffix = Path(filename).suffix.lower()
    if suffix not in LOG_FORMATS:
        raise InputError(f"unknown log format {suffix!r}: use one of {', '.join(LOG_FORMATS)}")
    transfers = gw.transfers
    try:
        release = transfers.acquire("import", principal_of(request).user_id, IMPORTS_PER_USER)
    except Busy as exc:
        return _error(429, "busy", str(exc))
    try:
        with tempfile.TemporaryDirectory(prefix="livedata-import-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            if not await _spool(request, path, gw.settings.max_body_bytes):
                return _error(
                    413,
                    "too_large",
                    f"the log is larger than {gw.settings.max_body_bytes} bytes: import it with "
                    "`livedata import`",
                )
            try:
                summary = await import_log(
                    gw.store, info.decoder, orgId, chassisId, path, start_ms=start
                )
            except InputError as exc:
                raise InputError(str(exc).replace(path.name, filename)) from None
    finally:
        release()
    body = summary.to_dict()
    body["file"] = filename
    return JSONResponse(body)


@router.get(
    "/resources/{orgId}/_common/datasets/{chassisId}/export",
    summary="Download a range of a machine's history as CSV or Parquet",
    response_class=StreamingResponse,
)
async def export(
    request: Request,
    orgId: str,
    chassisId: str,
    msgType: MsgTypeQuery,
    fields: FieldsQuery = None,
    from_: FromQuery = None,
    to: ToQuery = None,
    format: Annotated[str, Query(description="csv or parquet")] = "csv",
    maxPoints: Annotated[
        int | None,
        Query(
            ge=2,
            le=MAX_EXPORT_POINTS,
            description="downsample to at most this many points per field (min/max per bucket)",
        ),
    ] = None,
) -> Response:
    gw = gateway_of(request)
    check_msg_type(msgType)
    if format not in FORMATS:
        raise InputError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    info = await gw.catalog.require_machine(orgId, chassisId)
    units = {f["name"]: f["unit"] or "" for f in await gw.catalog.fields(info, msgType)}
    names = list(units) if fields is None else field_names(fields, MAX_EXPORT_FIELDS)
    start, end = time_range(from_, to, EXPORT_DEFAULT_MS, MAX_EXPORT_SPAN_MS)
    job = Export(gw.store, orgId, chassisId, msgType, names, units, start, end, maxPoints)
    transfers = gw.transfers
    try:
        release = transfers.acquire("export", principal_of(request).user_id, EXPORTS_PER_USER)
    except Busy as exc:
        return _error(429, "busy", str(exc))

    async def body() -> AsyncIterator[bytes]:
        try:
            async for block in job.encode(format):
                yield block
        finally:
            release()

    stream = body()
    weakref.finalize(stream, release)  # a download dropped before its first byte

    headers: dict[str, Any] = {
        "Content-Disposition": f'attachment; filename="{job.filename(format)}"'
    }
    return StreamingResponse(stream, media_type=_MEDIA[format], headers=headers)
