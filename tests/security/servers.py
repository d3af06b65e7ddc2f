"""Servers for the security tests: a demo with a second organisation and users of every role.

:func:`two_orgs_server` seeds a fresh data directory *before* the first start, so one
start is enough: organisation ``demo`` (A, the demo's own) and ``orgzq`` (B), each
with a viewer, an operator and an admin (an API token each), org B with two
machines, a line group and a DBC file of its own.  The server is started once per
test session and shared by the modules that ask for it.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from livedata.auth import Role
from livedata.metadata import GroupSpec, Metadata
from livedata.metadata.accounts import Accounts
from livedata.sim.demo import DBC_PATH
from tests.conftest import Server, start_demo, stop

ORG_A = "demo"
ORG_B = "orgzq"
B_MACHINES = ("ZQX-7001", "ZQX-7002")
B_MODEL = "ZQM"
PASSWORD = "correct horse battery staple"
ROLES = ("viewer", "operator", "admin")


@dataclass
class User:
    """A seeded user: its organisation, role, id and API token."""

    name: str
    org: str
    role: str
    id: int
    token: str
    token_id: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class TwoOrgs:
    """The running server and what was seeded into it."""

    server: Server
    users: dict[str, User]
    """By name: ``a_viewer`` … ``b_admin``."""
    ids: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per organisation (``A``/``B``): the ids to put into paths."""

    @property
    def url(self) -> str:
        return self.server.url

    def user(self, org: str, role: str) -> User:
        return self.users[f"{org.lower()}_{role}"]


async def seed_two_orgs(data_dir: Path) -> tuple[dict[str, User], dict[str, dict[str, str]]]:
    """Seed organisations A and B with users, tokens, machines, a group and a DBC of B."""
    meta = Metadata(f"sqlite:///{data_dir / 'metadata.db'}")
    await meta.start()
    try:
        await meta.ensure_org(ORG_A, "Demo fleet")
        await meta.ensure_org(ORG_B, "Org ZQ")
        for n, chassis in enumerate(B_MACHINES, 1):
            await meta.upsert_machine(ORG_B, chassis, f"ZQ machine {n}", B_MODEL)
        group = await meta.create_group(
            ORG_B, GroupSpec("ZQ group", "client_raw_data", ["cpu_usage"], "%")
        )
        dbc = await meta.add_dbc(ORG_B, "zqx.dbc", DBC_PATH.read_text())
        accounts = Accounts(meta)
        users: dict[str, User] = {}
        for org, prefix in ((ORG_A, "a"), (ORG_B, "b")):
            for role in ROLES:
                name = f"{prefix}_{role}"
                row = await accounts.create_user(org, name, PASSWORD, Role[role])
                token, raw = await accounts.create_token(row.id, f"{name} token")
                users[name] = User(name, org, role, row.id, raw, token.id)
        ids = {
            "B": {
                "orgId": ORG_B,
                "chassisId": B_MACHINES[0],
                "model": B_MODEL,
                "groupId": group.id,
                "dbcId": str(dbc.id),
                "userId": str(users["b_viewer"].id),
                "tokenId": str(users["b_viewer"].token_id),
            }
        }
    finally:
        await meta.close()
    return users, ids


_SHARED: dict[str, TwoOrgs] = {}


def _stop_all() -> None:
    for shared in _SHARED.values():
        stop(shared.server)


atexit.register(_stop_all)


RULE = {
    "name": "a-rule",
    "kind": "value",
    "msgType": "client_raw_data",
    "field": "cpu_usage",
    "condition": ">",
    "threshold": 1e9,
}


def write_value(url: str, user: User, tag: str, value: float) -> int:
    """Write one client_raw_data value as ``user`` (admin); pushed live like device data."""
    t = int(time.time() * 1000)
    response = httpx.post(
        f"{url}/db/write/client_raw_data",
        params={"timeformat": "ms"},
        json={"data": {"rows": [[tag, t, value]]}},
        headers=user.headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return t


def _prepare(two: TwoOrgs) -> None:
    """After start: A's ids, an alert rule in each organisation, a value of a B machine."""
    a_admin, b_admin = two.user("A", "admin"), two.user("B", "admin")
    with httpx.Client(base_url=two.url, timeout=10) as client:
        groups = client.get(f"/api/resources/{ORG_A}/groups", headers=a_admin.headers).json()
        dbc = client.get(f"/api/resources/{ORG_A}/dbc", headers=a_admin.headers).json()
        rule_ids = {}
        for key, admin, name in (("A", a_admin, "a-rule"), ("B", b_admin, "zqx-rule")):
            org = ORG_A if key == "A" else ORG_B
            response = client.post(
                f"/api/resources/{org}/alert-rules",
                json={**RULE, "name": name},
                headers=admin.headers,
            )
            assert response.status_code == 201, response.text
            rule_ids[key] = str(response.json()["id"])
    two.ids["A"] = {
        "orgId": ORG_A,
        "chassisId": two.server.machines[0],
        "model": "WL",
        "groupId": groups["groups"][0]["id"],
        "dbcId": str(dbc["dbc"][0]["id"]),
        "userId": str(two.user("A", "viewer").id),
        "tokenId": str(two.user("A", "viewer").token_id),
        "ruleId": rule_ids["A"],
    }
    two.ids["B"]["ruleId"] = rule_ids["B"]
    for key in ("A", "B"):
        two.ids[key]["iothubName"] = two.ids[key]["orgId"]
        two.ids[key]["deviceId"] = two.ids[key]["chassisId"]
    write_value(two.url, b_admin, f"{B_MACHINES[0]}.cpu_usage", 12.5)


def two_orgs_server(tmp_path_factory: pytest.TempPathFactory) -> TwoOrgs:
    """The shared two-organisation demo (2 machines in A), started on first use."""
    shared = _SHARED.get("two_orgs")
    if shared is None or shared.server.process.poll() is not None:
        data_dir = tmp_path_factory.mktemp("two-orgs")
        users, ids = asyncio.run(seed_two_orgs(data_dir))
        server = start_demo(data_dir, "--machines", "2")
        shared = _SHARED["two_orgs"] = TwoOrgs(server, users, ids)
        try:
            _prepare(shared)
        except BaseException:
            stop(server)
            raise
    return shared


def release_two_orgs() -> None:
    """Stop the shared server (session teardown; a second call does nothing)."""
    shared = _SHARED.pop("two_orgs", None)
    if shared is not None:
        stop(shared.server)


@contextmanager
def env(**values: str) -> Iterator[None]:
    """Set ``LIVEDATA_*`` variables for servers started inside (``start_demo`` copies os.environ)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
