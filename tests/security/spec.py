"""The access table of issue 6, written out independently of :mod:`livedata.auth.policy`.

One entry per route of the app (method, path template): who may call it.  The
policy unit tests check :func:`~livedata.auth.policy.rule_for` against it, the
matrix test checks the running server against it, and both fail when the app
gains a route this table does not classify.
"""

from __future__ import annotations

from typing import Any

from livedata.auth import Role

PUBLIC = "public"
DEVICE = "device"
WS_LIVE = "/api/resources/{orgId}/_common/datasets/{chassisId}/live"

SPEC: dict[tuple[str, str], Any] = {
    ("POST", "/api/auth/login"): PUBLIC,
    ("POST", "/api/auth/logout"): Role.viewer,
    ("GET", "/api/auth/me"): Role.viewer,
    ("POST", "/api/auth/live-token"): Role.viewer,
    ("GET", "/api/auth/tokens"): Role.viewer,
    ("POST", "/api/auth/tokens"): Role.viewer,
    ("DELETE", "/api/auth/tokens/{tokenId}"): Role.viewer,
    ("GET", "/api/orgs"): Role.viewer,
    ("PUT", "/api/resources/{orgId}"): Role.admin,
    ("GET", "/api/resources/{orgId}/tokens"): Role.admin,
    ("GET", "/api/resources/{orgId}/users"): Role.admin,
    ("POST", "/api/resources/{orgId}/users"): Role.admin,
    ("PUT", "/api/resources/{orgId}/users/{userId}"): Role.admin,
    ("DELETE", "/api/resources/{orgId}/users/{userId}"): Role.admin,
    ("POST", "/api/resources/{orgId}/machines/{chassisId}/secret"): Role.admin,
    ("GET", "/api/resources/{orgId}/audit"): Role.admin,
    ("GET", "/api/resources/{orgId}/machines"): Role.viewer,
    ("GET", "/api/resources/{orgId}/machines/{chassisId}"): Role.viewer,
    ("GET", "/api/resources/{orgId}/machines/{chassisId}/status"): Role.viewer,
    ("POST", "/api/resources/{orgId}/machines"): Role.admin,
    ("PUT", "/api/resources/{orgId}/machines/{chassisId}"): Role.admin,
    ("DELETE", "/api/resources/{orgId}/machines/{chassisId}"): Role.admin,
    ("GET", "/api/resources/{orgId}/machines/{chassisId}/data"): Role.viewer,
    ("POST", "/api/resources/{orgId}/machines/{chassisId}/provision"): Role.admin,
    ("POST", "/api/resources/{orgId}/machines/import"): Role.admin,
    ("GET", "/api/resources/{orgId}/machines/{chassisId}/dtcs"): Role.viewer,
    ("GET", "/api/resources/{orgId}/machines/{chassisId}/decoding"): Role.viewer,
    ("GET", "/api/resources/{orgId}/redecode"): Role.viewer,
    ("POST", "/api/resources/{orgId}/redecode"): Role.admin,
    ("DELETE", "/api/resources/{orgId}/redecode"): Role.admin,
    ("GET", "/api/resources/{orgId}/_common/datasets/{chassisId}/history"): Role.viewer,
    ("GET", "/api/resources/{orgId}/_common/datasets/{chassisId}/export"): Role.viewer,
    ("POST", "/api/resources/{orgId}/machines/{chassisId}/import"): Role.admin,
    ("GET", "/api/resources/{orgId}/groups"): Role.viewer,
    ("POST", "/api/resources/{orgId}/groups"): Role.admin,
    ("PUT", "/api/resources/{orgId}/groups/{groupId}"): Role.admin,
    ("DELETE", "/api/resources/{orgId}/groups/{groupId}"): Role.admin,
    ("GET", "/api/resources/{orgId}/dbc"): Role.viewer,
    ("POST", "/api/resources/{orgId}/dbc"): Role.admin,
    ("GET", "/api/resources/{orgId}/dbc/{dbcId}"): Role.viewer,
    ("GET", "/api/resources/{orgId}/dbc/{dbcId}/signals"): Role.viewer,
    ("GET", "/api/resources/{orgId}/models"): Role.viewer,
    ("POST", "/api/resources/{orgId}/models"): Role.admin,
    ("GET", "/api/resources/{orgId}/models/{model}/signals"): Role.viewer,
    ("GET", "/api/resources/{orgId}/dbc/{dbcId}/diff"): Role.viewer,
    ("PUT", "/api/resources/{orgId}/machines/{chassisId}/dbc"): Role.admin,
    ("DELETE", "/api/resources/{orgId}/machines/{chassisId}/fields/{msgType}/{field}"): Role.admin,
    ("PUT", "/api/resources/{orgId}/models/{model}/dbc"): Role.admin,
    ("GET", "/api/resources/{orgId}/alert-rules"): Role.viewer,
    ("POST", "/api/resources/{orgId}/alert-rules"): Role.admin,
    ("GET", "/api/resources/{orgId}/alert-rules/{ruleId}"): Role.viewer,
    ("PUT", "/api/resources/{orgId}/alert-rules/{ruleId}"): Role.admin,
    ("DELETE", "/api/resources/{orgId}/alert-rules/{ruleId}"): Role.admin,
    ("GET", "/api/resources/{orgId}/alerts"): Role.viewer,
    ("GET", "/api/resources/{orgId}/alerts/{alertId}"): Role.viewer,
    ("POST", "/api/resources/{orgId}/alerts/{alertId}/ack"): Role.operator,
    ("GET", "/api/resources/{orgId}/alerts/{alertId}/notifications"): Role.viewer,
    ("GET", "/api/resources/{orgId}/fleet"): Role.viewer,
    ("GET", "/api/iothubs/{iothubName}/devices/{deviceId}/methods"): Role.viewer,
    ("POST", "/api/iothubs/{iothubName}/devices/{deviceId}/methods"): Role.operator,
    ("POST", "/api/ingest/{orgId}/{chassisId}/{msgType}"): DEVICE,
    ("GET", "/db/watch/{table}"): Role.viewer,
    ("POST", "/db/write/{table}"): Role.admin,
    ("GET", WS_LIVE): Role.viewer,
}
"""(method, template) → ``PUBLIC``, ``DEVICE`` or the least role (the WebSocket as GET)."""

WATCH_AUDIT_ROLE = Role.admin
"""``/db/watch/audit`` (the audit log table) needs more than the other watch tables."""

ORG_PARAMS = ("orgId", "iothubName")
"""Path parameters naming the organisation."""


def app_routes() -> set[tuple[str, str]]:
    """(method, template) of every HTTP route in the OpenAPI description, plus WebSockets
    (the app's and the live one the server layer serves)."""
    from fastapi.routing import APIWebSocketRoute

    from livedata.gateway.app import create_app
    from livedata.runtime import Runtime
    from livedata.settings import Settings

    app = create_app(Runtime(Settings(data_dir="/nonexistent-livedata-test")))
    found = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }

    def walk(routes: Any) -> None:
        for route in routes:
            if isinstance(route, APIWebSocketRoute):
                found.add(("GET", route.path))
            walk(getattr(route, "routes", ()) or ())

    walk(app.routes)
    found.add(("GET", app.state.live.path))  # the live WebSocket, served by the server layer
    return found
