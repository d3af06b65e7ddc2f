"""The API documentation pages, served from the package: no CDN, they work offline.

Every request body in the description has an example: :data:`BODY_EXAMPLES` (by the
body's schema name) and :data:`OPERATION_EXAMPLES` (by operation and content type,
for bodies without a named schema) are filled in by :func:`with_examples` when the
description is built, in one place instead of in every route; an example a route
gives itself is kept.

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load their scripts from
``/static/vendor/`` (copied from the npm packages ``swagger-ui-dist`` and ``redoc``
by ``scripts/build_web.py``) and the description from ``/openapi.json``.  All three
are public, like FastAPI's defaults: the description names routes, not data.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

VENDOR = "/static/vendor"

_DBC = 'VERSION ""\n\nBU_: ECU\n\nBO_ 256 Engine: 8 ECU\n SG_ engine_rpm : 0|16@1+ (0.25,0) [0|8000] "rpm" ECU\n'

BODY_EXAMPLES: dict[str, Any] = {
    "LoginBody": {"username": "admin", "password": "correct horse battery", "org": "acme"},
    "TokenBody": {"name": "grafana", "expiresInDays": 90},
    "NewUserBody": {"username": "maria", "password": "a long passphrase", "role": "operator"},
    "UserChangeBody": {"role": "viewer"},
    "OrgBody": {"name": "ACME Earthworks", "timezone": "Europe/Berlin", "followViewers": True},
    "MachineBody": {
        "chassisId": "WL-0101",
        "name": "Loader 101",
        "model": "WL900",
        "tags": ["north", "rental"],
        "location": "Yard 3",
    },
    "MachineChange": {"name": "Loader 101 (north)", "tags": ["north"], "disabled": False},
    "ModelBody": {"name": "WL900"},
    "GroupBody": {
        "name": "Drive",
        "msgType": "vehicle_can",
        "fields": ["speed", "brake_status"],
        "unit": "km/h",
        "model": "WL900",
    },
    "AssignBody": {"dbcId": 3},
    "RedecodeBody": {
        "machines": ["WL-0101", "WL-0102"],
        "from": 1765000000000,
        "to": 1765003600000,
        "dbcId": 4,
    },
    "RuleBody": {
        "name": "Coolant too hot",
        "kind": "value",
        "scope": "model",
        "scopeValue": "WL900",
        "msgType": "vehicle_can",
        "field": "coolant_temp",
        "condition": ">",
        "threshold": 105,
        "clearThreshold": 100,
        "forSeconds": 30,
        "severity": "critical",
        "notify": {"email": ["fleet@example.com"]},
    },
    "AckBody": {"comment": "seen, technician on the way"},
    "MethodBody": {"methodName": "startMs", "payload": None, "responseTimeoutInSeconds": 30},
    "CsvBody": {"csv": "chassis,name,model,tags,location\nWL-0101,Loader 101,WL900,north,Yard 3\n"},
}
"""Request body examples by schema name (the Pydantic model's name)."""

OPERATION_EXAMPLES: dict[tuple[str, str, str], Any] = {
    ("post", "/api/resources/{orgId}/machines/import", "multipart/form-data"): {
        "file": "machines.csv"
    },
    ("post", "/api/resources/{orgId}/dbc", "multipart/form-data"): {"file": "loader.dbc"},
    ("post", "/api/resources/{orgId}/dbc", "application/json"): {
        "name": "loader.dbc",
        "content": _DBC,
    },
    ("post", "/api/resources/{orgId}/dbc", "text/plain"): _DBC,
    ("post", "/api/ingest/{orgId}/{chassisId}/{msgType}", "application/json"): {
        "v": 1,
        "ts": 1767225600000,
        "kind": "realTime",
        "values": {"speed": 12.5, "engine_rpm": 1450},
    },
    ("post", "/api/resources/{orgId}/machines/{chassisId}/import", "application/octet-stream"): (
        "(1767225600.000000) can0 18FEF100#FF0A1BFFFFFFFFFF\n"
    ),
}
"""Examples of bodies without a named schema: (method, path, content type) → example."""


def _schema_name(schema: dict[str, Any]) -> str | None:
    for candidate in [schema, *schema.get("anyOf", [])]:
        ref = candidate.get("$ref")
        if ref:
            return str(ref).rsplit("/", 1)[-1]
    title = schema.get("title")
    return str(title) if title in BODY_EXAMPLES else None


def with_examples(spec: dict[str, Any]) -> dict[str, Any]:
    """Give every request body of ``spec`` (an OpenAPI description) an example, in place."""
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            for content_type, media in (body or {}).get("content", {}).items():
                if "example" in media or "examples" in media:
                    continue
                key = (method, path, content_type)
                name = _schema_name(media.get("schema", {}))
                if key in OPERATION_EXAMPLES:
                    media["example"] = OPERATION_EXAMPLES[key]
                elif name in BODY_EXAMPLES:
                    media["example"] = BODY_EXAMPLES[name]
    return spec


def install_docs(app: FastAPI) -> None:
    """Add ``/docs`` and ``/redoc`` (create the app with ``docs_url=redoc_url=None``)."""
    title = f"{app.title} API"
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_examples(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
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
