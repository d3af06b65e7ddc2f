"""The ASGI app: HTTP API, live WebSocket, web UI, health and metrics.

Every request passes :class:`~livedata.gateway.security.SecurityMiddleware` first:
who may call what is decided there, from :mod:`livedata.auth.policy`.

:func:`create_app` is where the gateway meets the runtime: it builds the one
:class:`~livedata.gateway.gateway.Gateway` from the runtime's parts (keeping it in
``app.state.gateway``, where routes find it) and adds the gateway's start to the
runtime's ``on_started`` hooks; the runtime never imports the gateway.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from livedata.gateway.foxglove import router as foxglove_router
from livedata.gateway.gateway import Gateway
from livedata.gateway.ingest_http import ingest_router
from livedata.gateway.live import LiveEndpoint
from livedata.gateway.machines_api import router as machines_router
from livedata.gateway.models_api import router as models_router
from livedata.gateway.redecode_api import router as redecode_router
from livedata.gateway.replay import router as replay_router
from livedata.gateway.security import SecurityMiddleware
from livedata.gateway.transfer import router as transfer_router
from livedata.gateway.watch import router as watch_router

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


def create_app(rt: Runtime, **socketio: Any) -> FastAPI:
    """The gateway app for ``rt``; the caller starts and stops the runtime around serving it.

    ``socketio``: options of :class:`~livedata.gateway.sio.SocketGateway` (mount it with
    :func:`~livedata.gateway.sio.with_socketio`)."""
    gateway = Gateway(
        settings=rt.settings,
        roles=rt.roles,
        tasks=rt,
        pubsub=rt.pubsub,
        store=rt.store,
        meta=rt.meta,
        catalog=rt.catalog,
        devices=rt.devices,
        ingest=rt.ingest,
        http_devices=rt.http_devices,
        redecoder=rt.redecoder,
        refresh_alert_rules=rt.alerts.refresh if "alerts" in rt.roles else None,
        **socketio,
    )
    rt.on_started.append(gateway.start)

    app = FastAPI(
        title="livedata",
        version=__version__,
        summary="Machine telemetry, live and history",
        docs_url=None,  # served from the package by install_docs: offline, no CDN
        redoc_url=None,
    )
    app.state.gateway = gateway
    app.add_middleware(SecurityMiddleware, security=gateway.security)
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
    app.include_router(watch_router)
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
        info = await gateway.catalog.require_machine(org, chassis)
        return [f["name"] for f in await gateway.catalog.fields(info, msg_type)]

    # served by the server layer, not through the app (see livedata.gateway.live)
    sec = gateway.security
    app.state.live = LiveEndpoint(
        sec.admit_websocket, sec.close_live, gateway.hub, known_fields, gateway.viewers
    )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        status = await rt.health()
        status["liveChannels"] = len(gateway.hub.channels)
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
