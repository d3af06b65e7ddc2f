"""The ASGI app: HTTP API, live WebSocket, web UI, health and metrics.

Every request passes :class:`~livedata.gateway.security.SecurityMiddleware` first:
who may call what is decided there, from :mod:`livedata.auth.policy`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from livedata import __version__
from livedata.errors import BackendError, Conflict, InputError, NotFound
from livedata.gateway.alerts_api import router as alerts_router
from livedata.gateway.api import router
from livedata.gateway.auth_api import router as auth_router
from livedata.gateway.commands import router as commands_router
from livedata.gateway.docs import install_docs
from livedata.gateway.dtcs_api import router as dtcs_router
from livedata.gateway.fleet import Fleet
from livedata.gateway.foxglove import router as foxglove_router
from livedata.gateway.ingest_http import ingest_router
from livedata.gateway.live import LiveEndpoint
from livedata.gateway.machines_api import router as machines_router
from livedata.gateway.models_api import router as models_router
from livedata.gateway.redecode_api import router as redecode_router
from livedata.gateway.replay import router as replay_router
from livedata.gateway.security import SecurityMiddleware, security
from livedata.gateway.transfer import Transfers
from livedata.gateway.transfer import router as transfer_router
from livedata.gateway.watch import install as install_watch

if TYPE_CHECKING:
    from livedata.runtime import Runtime

log = logging.getLogger("livedata.gateway")
STATIC = Path(__file__).resolve().parent.parent / "web" / "static"


HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}
"""The ``error.code`` of Starlette's own HTTP errors (an unmatched route is ``not_found``)."""


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(rt: Runtime) -> FastAPI:
    """The gateway app for ``rt``; the caller starts and stops the runtime around serving it."""

    app = FastAPI(
        title="livedata",
        version=__version__,
        summary="Machine telemetry, live and history",
        docs_url=None,  # served from the package by install_docs: offline, no CDN
        redoc_url=None,
    )
    app.state.runtime = rt
    app.state.fleet = Fleet(rt)  # the one fleet state: fleet summary and Socket.IO share it
    rt.on_started.append(security(rt).start)
    app.add_middleware(SecurityMiddleware, rt=rt)
    app.include_router(auth_router)
    app.include_router(machines_router)  # before `router`: /machines/import is no chassis id
    app.include_router(models_router)
    app.include_router(router)
    app.include_router(alerts_router)
    app.include_router(commands_router)
    app.include_router(dtcs_router)
    app.include_router(redecode_router)
    app.include_router(ingest_router)
    app.include_router(transfer_router)
    app.include_router(replay_router)
    app.include_router(foxglove_router)
    app.state.transfers = Transfers()
    install_watch(app, rt)
    install_docs(app)

    @app.exception_handler(NotFound)
    async def _not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return _error(404, exc.code, str(exc))

    @app.exception_handler(Conflict)
    async def _conflict(_r: Request, exc: Conflict) -> JSONResponse:
        return _error(409, exc.code, str(exc))

    @app.exception_handler(InputError)
    async def _input(_r: Request, exc: InputError) -> JSONResponse:
        return _error(400, exc.code, str(exc))

    @app.exception_handler(BackendError)
    async def _backend(_r: Request, exc: BackendError) -> JSONResponse:
        return _error(503, "unavailable", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or HTTP_CODES.get(exc.status_code, "error")
        response = _error(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _internal(_r: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %r", exc, exc_info=exc)
        return _error(500, "internal", "internal server error (logged)")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err["loc"] if p != "body")
            parts.append(f"{where}: {err['msg']}")
        return _error(400, "bad_request", "; ".join(parts))

    async def known_fields(org: str, chassis: str, msg_type: str) -> list[str]:
        info = await rt.require_machine(org, chassis)
        return [f["name"] for f in await rt.catalog.fields(info, msg_type)]

    # served by the server layer, not through the app (see livedata.gateway.live)
    sec = security(rt)
    app.state.live = LiveEndpoint(
        sec.admit_websocket, sec.close_live, rt.hub, known_fields, rt.viewers
    )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        status = await rt.health()
        return JSONResponse(status, status_code=200 if status["ok"] else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        rt.update_gauges()
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app
