"""Which role each route needs and which organisation it touches (sans I/O).

:func:`rule_for` maps a request (method, path, query) to a :class:`Rule`; the
gateway's security middleware (:mod:`livedata.gateway.security`) does the I/O.
Deny by default: a path under ``/api`` or ``/db`` that no rule names is 404 for
everyone, so a route added without a rule is closed, not open.  Pages (the HTML
the browser navigates to) send an anonymous user to the login page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from livedata.auth import Role


class Access(Enum):
    public = "public"
    """No credentials needed."""
    page = "page"
    """An HTML page: anonymous users are redirected to the login page."""
    user = "user"
    """A user (session, token or live token) with at least ``Rule.role``."""
    device = "device"
    """A device's own secret (HTTP ingest)."""
    closed = "closed"
    """No such route: 404."""


@dataclass(frozen=True, slots=True)
class Rule:
    access: Access
    role: Role = Role.viewer
    org: str | None = None
    """The organisation named by the URL, which must be the caller's."""
    chassis: str | None = None
    command: bool = False
    """A device method call (counted against ``commands_per_minute``)."""


_PUBLIC = Rule(Access.public)
_CLOSED = Rule(Access.closed)
_READ = ("GET", "HEAD")

_RESOURCES = re.compile(r"^/api/resources/(?P<org>[^/]+)(?P<rest>/.*)?\Z")
_IOTHUB = re.compile(r"^/api/iothubs/(?P<org>[^/]+)/devices/(?P<chassis>[^/]+)(?P<rest>/.*)?\Z")
_INGEST = re.compile(r"^/api/ingest/(?P<org>[^/]+)/(?P<chassis>[^/]+)/[^/]+\Z")
_ADMIN_READS = re.compile(r"^/(users|audit|tokens)(/|\Z)")
_OPERATOR_WRITES = re.compile(r"^/alerts/[^/]+/ack\Z")
_PAGES = re.compile(r"^/(\Z|static/[^/]+\.html\Z)")
LOGIN_PAGE = "/static/login.html"

_AUTH = {
    ("POST", "/api/auth/login"): _PUBLIC,
    ("GET", "/api/auth/me"): Rule(Access.user),
    ("POST", "/api/auth/logout"): Rule(Access.user),
    ("POST", "/api/auth/live-token"): Rule(Access.user),
    ("GET", "/api/auth/tokens"): Rule(Access.user),
    ("POST", "/api/auth/tokens"): Rule(Access.user),
}
_TOKEN_ITEM = re.compile(r"^/api/auth/tokens/\d+\Z")


def rule_for(method: str, path: str, org_param: str | None = None) -> Rule:
    """The rule of one request; ``org_param`` is the ``org`` query parameter, if any."""
    if path == LOGIN_PAGE or path.startswith("/static/vendor/"):
        return _PUBLIC
    if _PAGES.match(path):
        return Rule(Access.page)
    if m := _RESOURCES.match(path):
        rest = m["rest"] or ""
        if method in _READ:
            role = Role.admin if _ADMIN_READS.match(rest) else Role.viewer
        elif method in ("POST", "PUT", "PATCH", "DELETE"):
            role = Role.operator if _OPERATOR_WRITES.match(rest) else Role.admin
        else:
            return _CLOSED
        return Rule(Access.user, role, m["org"])
    if m := _IOTHUB.match(path):
        command = method == "POST" and m["rest"] == "/methods"
        role = Role.operator if method == "POST" else Role.viewer
        return Rule(Access.user, role, m["org"], m["chassis"], command)
    if m := _INGEST.match(path):
        return Rule(Access.device, Role.viewer, m["org"], m["chassis"])
    if path.startswith("/api/auth/"):
        if _TOKEN_ITEM.match(path) and method == "DELETE":
            return Rule(Access.user)
        return _AUTH.get((method, path), _CLOSED)
    if path == "/api/orgs":
        return Rule(Access.user)
    if path.lower() == "/db/watch/audit":
        return Rule(Access.user, Role.admin, org_param)
    if path.startswith("/db/watch/"):
        return Rule(Access.user, Role.viewer, org_param)
    if path.startswith("/db/write/"):
        return Rule(Access.user, Role.admin, org_param)
    if path == "/metrics":
        return Rule(Access.user, Role.admin)
    if path.startswith(("/api/", "/db/")) or path in ("/api", "/db"):
        return _CLOSED
    return _PUBLIC
