"""The demo: organisation ``demo``, the wheel-loader DBC, N simulated machines, default groups.

At start the fleet first sends the last ``history_seconds`` (default 120 s) as
backfill — only the part not already stored when the demo restarts on the same
data directory — so the Live Data page opens with its two minutes drawn.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from livedata.auth import Role
from livedata.decode.can import CanDecoder
from livedata.errors import Conflict
from livedata.metadata import GroupSpec, Metadata
from livedata.metadata.accounts import Accounts
from livedata.model import MsgType
from livedata.runtime import Runtime
from livedata.sim import DBC_PATH, ORG
from livedata.sim.fleet import Fleet, default_chassis_ids

ADMIN = "admin"
MODEL = "WL"

DEFAULT_GROUPS = (
    GroupSpec("Drive", MsgType.VEHICLE_CAN, ["speed", "brake_status"], "km/h"),
    GroupSpec("Engine", MsgType.VEHICLE_CAN, ["engine_rpm"], "rpm"),
    GroupSpec("Engine temperatures", MsgType.VEHICLE_CAN, ["coolant_temp", "ambient_temp"], "°C"),
    GroupSpec("Hydraulics", MsgType.VEHICLE_CAN, ["hydraulic_pressure"], "bar"),
    GroupSpec("Device", MsgType.CLIENT_RAW_DATA, ["cpu_usage", "mem_usage"], "%"),
)


async def seed_demo(meta: Metadata, chassis_ids: list[str]) -> None:
    """Create (or update) the demo organisation, its DBC, machines and default groups.

    The machines go in one transaction of two statements (:meth:`Metadata.upsert_machines`):
    5,000 take well under a second instead of a session each (~20 s of a gateway's start)."""
    content = DBC_PATH.read_text()
    await meta.ensure_org(ORG, "Demo fleet", follow_viewers=True)
    dbc = await meta.find_dbc(ORG, "loader.dbc")
    if dbc is None or dbc.content != content:
        dbc = await meta.add_dbc(ORG, "loader.dbc", content)
    await meta.assign_model_dbc(ORG, MODEL, dbc.id)
    machines = [(c, f"Wheel loader {n}", MODEL) for n, c in enumerate(chassis_ids, 1)]
    await meta.upsert_machines(ORG, machines)
    await meta.ensure_groups(ORG, DEFAULT_GROUPS)


async def ensure_demo_admin(meta: Metadata) -> str | None:
    """Create the demo organisation's ``admin`` with a random password, once; the password."""
    accounts = Accounts(meta)
    if await accounts.find_user(ADMIN, ORG) is not None:
        return None
    password = secrets.token_urlsafe(12)
    try:
        await accounts.create_user(ORG, ADMIN, password, Role.admin)
    except Conflict:  # another process seeding the same database was first
        return None
    return password


def attach_seed(
    rt: Runtime, machines: int, on_admin: Callable[[str], None] | None = None
) -> list[str]:
    """Seed the demo organisation once ``rt`` has started (no fleet); returns machine ids.

    The first time, the organisation's ``admin`` is created and ``on_admin`` gets its
    password (it is stored hashed only, so this is the one chance to show it).
    """
    chassis_ids = default_chassis_ids(machines)

    async def seed() -> None:
        await seed_demo(rt.meta, chassis_ids)
        password = await ensure_demo_admin(rt.meta)
        if password is not None and on_admin is not None:
            on_admin(password)
        rt.catalog.invalidate()

    rt.on_started.append(seed)
    return chassis_ids


def attach_demo(
    rt: Runtime, machines: int, on_admin: Callable[[str], None] | None = None
) -> list[str]:
    """Seed the demo organisation and run the fleet once ``rt`` has started; returns machine ids."""
    chassis_ids = attach_seed(rt, machines, on_admin)
    decoder = CanDecoder.from_dbc(DBC_PATH.read_text())

    async def run_fleet() -> None:
        fleet = Fleet(ORG, chassis_ids, decoder, rt.devices.send, period=rt.settings.fleet_period)
        rt.fleet = fleet
        serve = getattr(rt.devices, "serve_methods", None)
        if serve is not None:  # the in-process link: the fleet answers direct methods
            serve(ORG, fleet.handle_method, fleet.knows)
        now = int(time.time()) * 1000
        latest = (
            await rt.store.latest_ts(ORG, chassis_ids[0], MsgType.VEHICLE_CAN)
            if chassis_ids
            else None
        )
        seconds = rt.settings.history_seconds
        if latest is not None:
            seconds = max(0, min(seconds, (now - latest) // 1000))
        if seconds:
            await fleet.backfill(seconds, now)
        rt.spawn("fleet", fleet.run)

    rt.on_started.append(run_fleet)
    return chassis_ids
