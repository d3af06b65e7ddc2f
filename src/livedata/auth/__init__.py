"""Who may do what: users, roles, sessions, tokens and device secrets.

The security model, in one place:

- Every user belongs to one **organisation** and has one **role**: ``viewer`` (live
  data, history, status, alerts), ``operator`` (+ start/stop and other device
  methods, acknowledging alerts) or ``admin`` (+ machines, DBC files, groups, rules,
  users, tokens of others, the audit log).
- A request is authenticated by, in this order: ``Authorization: Bearer`` (an API
  token), the ``livedata_session`` cookie (a browser session), or for WebSocket/SSE
  only an ``access_token`` query parameter (a live token valid for 60 s, signed with
  the server's key).  Query-string tokens end up in proxy logs and browser history;
  that is why they are short-lived and only accepted where a browser cannot set a
  header.
- The organisation in a URL (``orgId``, ``iothubName``, ``org=``) must be the
  caller's: anything else is **404**, exactly as an unknown id, so ids of other
  organisations never leak.  A missing role in one's own organisation is 403.
- Devices do not log in as users: each has its own secret (HTTP ingest: Bearer;
  MQTT: username ``{org}/{chassis}`` with that secret in the generated Mosquitto
  password file, see :mod:`livedata.auth.mosquitto`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
    """A user's role; a higher role can do everything a lower one can."""

    viewer = 1
    operator = 2
    admin = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: use viewer, operator or admin") from None


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request or connection."""

    user_id: int
    username: str
    org: str
    role: Role
    via: str
    """``token``, ``session`` or ``live-token``."""
    credential: str = ""
    """The hash of the session id or API token (to end its live connections when revoked)."""
    csrf: str = ""
    """The CSRF token of a browser session."""


__all__ = ["Principal", "Role"]
