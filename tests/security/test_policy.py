"""Route rules, sans I/O: every route of the app has the rule issue 6 specifies (deny by default)."""

from __future__ import annotations

import re

import pytest

from livedata.auth import Role
from livedata.auth.policy import LOGIN_PAGE, Access, rule_for
from tests.security.spec import DEVICE, PUBLIC, SPEC, WATCH_AUDIT_ROLE, app_routes

VALUES = {
    "orgId": "acme",
    "iothubName": "acme",
    "chassisId": "CH-1",
    "deviceId": "CH-1",
    "msgType": "vehicle_can",
    "table": "vehicle_can",
}


def fill(template: str) -> str:
    """A concrete path for a template: org ``acme``, machine ``CH-1``, ids 7."""
    return re.sub(r"\{(\w+)\}", lambda m: VALUES.get(m.group(1), "7"), template)


@pytest.fixture(scope="module")
def routes() -> set[tuple[str, str]]:
    return app_routes()


def test_every_route_is_in_the_spec_table(routes: set[tuple[str, str]]) -> None:
    """The app's routes (OpenAPI + WebSocket) and the spec table list exactly the same routes."""
    assert routes - set(SPEC) == set(), "routes without an access rule in tests/security/spec.py"
    assert set(SPEC) - routes == set(), "spec entries for routes the app no longer has"


@pytest.mark.parametrize(("method", "template"), sorted(SPEC), ids=lambda v: str(v))
def test_rule_of_each_route_matches_the_spec(method: str, template: str) -> None:
    """rule_for gives each route the access, role and organisation of the spec table."""
    path = fill(template)
    rule = rule_for(method, path, None)
    expected = SPEC[(method, template)]
    if expected == PUBLIC:
        assert rule.access is Access.public
        return
    if expected == DEVICE:
        assert (rule.access, rule.org, rule.chassis) == (Access.device, "acme", "CH-1")
        return
    assert rule.access is Access.user, (method, path, rule)
    assert rule.role is expected, (method, path, rule)
    if "{orgId}" in template or "{iothubName}" in template:
        assert rule.org == "acme"
    else:
        assert rule.org is None
    if "{iothubName}" in template:
        assert rule.chassis == "CH-1"


def test_no_api_route_is_closed_or_public_except_login(routes: set[tuple[str, str]]) -> None:
    """No /api or /db route falls to 'closed' (404 for all) and only login is public."""
    public = []
    for method, template in routes:
        rule = rule_for(method, fill(template), None)
        assert rule.access is not Access.closed, (method, template)
        if rule.access is Access.public:
            public.append((method, template))
    assert public == [("POST", "/api/auth/login")]


@pytest.mark.parametrize("table", ["audit", "AUDIT", "Audit"])
def test_audit_table_needs_admin(table: str) -> None:
    """The audit log table needs the admin role, however its name is spelt."""
    rule = rule_for("GET", f"/db/watch/{table}", "acme")
    assert (rule.access, rule.role, rule.org) == (Access.user, WATCH_AUDIT_ROLE, "acme")


def test_db_routes_take_the_org_query_parameter() -> None:
    """/db/watch and /db/write check the ``org`` query parameter against the caller's."""
    assert rule_for("GET", "/db/watch/vehicle_can", "other").org == "other"
    assert rule_for("POST", "/db/write/t1", "other").org == "other"
    assert rule_for("GET", "/db/watch/vehicle_can", None).org is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api"),
        ("GET", "/api/"),
        ("GET", "/db"),
        ("GET", "/db/"),
        ("GET", "/api/nope"),
        ("GET", "/api/orgs/"),
        ("GET", "/api/auth/login"),
        ("GET", "/api/auth/nope"),
        ("DELETE", "/api/auth/tokens/abc"),
        ("PUT", "/api/auth/tokens/7"),
        ("POST", "/api/auth/me"),
        ("OPTIONS", "/api/resources/acme/machines"),
        ("TRACE", "/api/resources/acme/machines"),
        ("GET", "/db/other/vehicle_can"),
        ("GET", "/api/ingest/acme/CH-1"),
    ],
)
def test_unknown_api_paths_are_closed(method: str, path: str) -> None:
    """Anything under /api or /db that no rule names is closed (404), not open."""
    assert rule_for(method, path, None).access is Access.closed


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/api/resources/acme/anything/new", Role.viewer),
        ("HEAD", "/api/resources/acme/machines", Role.viewer),
        ("PATCH", "/api/resources/acme/machines/CH-1", Role.admin),
        ("POST", "/api/resources/acme/new-thing", Role.admin),
        ("GET", "/api/resources/acme/users/7", Role.admin),
        ("GET", "/api/resources/acme/tokens/7", Role.admin),
        ("POST", "/api/resources/acme/alerts/7/ack", Role.operator),
        ("POST", "/api/resources/acme/alerts/7/ack/more", Role.admin),
        ("GET", "/api/resources/acme", Role.viewer),
        ("GET", "/api/iothubs/acme/devices/CH-1", Role.viewer),
        ("DELETE", "/api/iothubs/acme/devices/CH-1/methods", Role.viewer),
    ],
)
def test_new_routes_under_an_org_get_safe_defaults(method: str, path: str, role: Role) -> None:
    """Unlisted routes under an organisation default to viewer for reads and admin for writes."""
    rule = rule_for(method, path, None)
    assert (rule.access, rule.role, rule.org) == (Access.user, role, "acme")


def test_pages_and_static_files() -> None:
    """The UI pages need a login (redirect); the login page, vendor files and health are public."""
    assert rule_for("GET", "/", None).access is Access.page
    assert rule_for("GET", "/static/index.html", None).access is Access.page
    assert rule_for("GET", "/static/fleet.html", None).access is Access.page
    assert rule_for("GET", LOGIN_PAGE, None).access is Access.public
    assert rule_for("GET", "/static/vendor/echarts.min.js", None).access is Access.public
    assert rule_for("GET", "/healthz", None).access is Access.public
    metrics = rule_for("GET", "/metrics", None)
    assert (metrics.access, metrics.role) == (Access.user, Role.admin)


def test_org_segment_is_taken_literally() -> None:
    """Dot segments and doubled slashes do not move the organisation the rule checks."""
    assert rule_for("GET", "/api/resources/acme/../other/machines", None).org == "acme"
    assert rule_for("GET", "/api/resources/acme//machines", None).org == "acme"
    assert rule_for("GET", "/api/iothubs/acme/devices/../../other/devices/X", None).org == "acme"


def test_roles_are_ordered_and_parsed() -> None:
    """viewer < operator < admin; parse() accepts the names only."""
    assert Role.viewer < Role.operator < Role.admin
    assert Role.parse("operator") is Role.operator
    with pytest.raises(ValueError, match="unknown role"):
        Role.parse("root")
