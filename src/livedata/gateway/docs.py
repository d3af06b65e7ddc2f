"""The API documentation pages, served from the package: no CDN, they work offline.

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their scripts from
``/static/vendor/`` (copied from the npm packages ``swagger-ui-dist`` and ``redoc``
by ``scripts/build_web.py``) and the description from ``/openapi.json``.  All three
are public, like FastAPI's defaults: the description names routes, not data.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

VENDOR = "/static/vendor"


def install_docs(app: FastAPI) -> None:
    """Add ``/docs`` and ``/redoc`` (create the app with ``docs_url=redoc_url=None``)."""
    title = f"{app.title} API"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
