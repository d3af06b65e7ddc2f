"""The machine registry: create, change, disable, delete and bulk-import machines.

Checking what a user gives (:func:`check_spec`, :func:`parse_csv`) is sans-I/O;
:class:`Registry` applies it to the metadata database.  Used by the API
(:mod:`livedata.gateway.machines_api`) and ``livedata machines``.

A machine has a chassis id (its key, a :func:`~livedata.model.valid_id`), a name,
a model (created on first use; the model's DBC decodes it unless the machine has its
own), tags, a location label and a ``disabled`` flag.  A disabled machine stays in
the registry with its history, but ingest refuses its data and it is left out of the
broker's password file, so it cannot connect.

CSV import (``chassis,name,model,tags[,location]``; a header row is recognised by
its first cell ``chassis``; tags separated by ``;`` or ``|``): every row is checked
on its own, bad rows are reported with their line number and reason, good rows are
created or brought up to date, and a row equal to the stored machine changes
nothing -- importing the same file twice gives ``unchanged`` for every row.  Bounded:
at most :data:`MAX_IMPORT_ROWS` rows and :data:`MAX_IMPORT_BYTES` bytes.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, select

from livedata.errors import Conflict, InputError, NotFound
from livedata.metadata import Metadata
from livedata.metadata.tables import Machine, MachineField, MachineModel, Org
from livedata.model import valid_id

MAX_TAGS = 20
MAX_TAG = 32
MAX_NAME = 200
MAX_IMPORT_ROWS = 10_000
MAX_IMPORT_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """What a user sets on a machine."""

    name: str
    model: str
    tags: tuple[str, ...] = ()
    location: str = ""
    disabled: bool = False


@dataclass(slots=True)
class ImportReport:
    """The outcome of a CSV import, row by row (``line`` counts from 1, header included)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "errors": self.errors,
        }


def _printable(value: str, what: str, limit: int) -> str:
    value = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InputError(f"{what} contains control characters")
    if len(value) > limit:
        raise InputError(f"{what} is longer than {limit} characters")
    return value


def check_chassis(chassis: str) -> str:
    if not valid_id(chassis):
        raise InputError(
            f"chassis id {chassis[:80]!r} is not valid: 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return chassis


def check_spec(spec: MachineSpec) -> MachineSpec:
    """``spec`` trimmed and checked; :class:`InputError` saying what is wrong."""
    name = _printable(spec.name, "name", MAX_NAME)
    if not name:
        raise InputError("name is empty")
    if not valid_id(spec.model):
        raise InputError(
            f"model {spec.model[:80]!r} is not valid: 1-64 letters, digits, '_', '.', '-'"
        )
    tags = []
    for raw in spec.tags:
        tag = _printable(raw, "a tag", MAX_TAG)
        if tag and tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise InputError(f"{len(tags)} tags; at most {MAX_TAGS}")
    location = _printable(spec.location, "location", MAX_NAME)
    return replace(spec, name=name, tags=tuple(tags), location=location)


def split_tags(text: str) -> tuple[str, ...]:
    """Tags from one CSV cell: separated by ``;`` or ``|``."""
    return tuple(t.strip() for t in text.replace("|", ";").split(";") if t.strip())


def parse_csv(text: str) -> tuple[list[tuple[int, str, MachineSpec]], list[dict[str, Any]]]:
    """Rows ``(line, chassis, spec)`` and errors ``{"line", "chassis", "error"}`` of a CSV."""
    if len(text.encode()) > MAX_IMPORT_BYTES:
        raise InputError(f"the CSV file is larger than {MAX_IMPORT_BYTES // 1024} KiB")
    rows: list[tuple[int, str, MachineSpec]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text))
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if not rows and not errors and cells[0].strip().lower() in ("chassis", "chassisid"):
                continue  # the header
            if len(rows) + len(errors) >= MAX_IMPORT_ROWS:
                raise InputError(f"more than {MAX_IMPORT_ROWS} rows: split the file")
            chassis = cells[0].strip()
            try:
                if not 3 <= len(cells) <= 5:
                    raise InputError(
                        f"{len(cells)} columns; expected chassis,name,model,tags[,location]"
                    )
                check_chassis(chassis)
                if chassis in seen:
                    raise InputError(f"chassis {chassis} already on line {seen[chassis]}")
                spec = check_spec(
                    MachineSpec(
                        name=cells[1],
                        model=cells[2].strip(),
                        tags=split_tags(cells[3]) if len(cells) > 3 else (),
                        location=cells[4] if len(cells) > 4 else "",
                    )
                )
            except InputError as exc:
                errors.append({"line": line, "chassis": chassis[:64], "error": str(exc)})
                continue
            seen[chassis] = line
            rows.append((line, chassis, spec))
    except csv.Error as exc:
        raise InputError(f"not a CSV file (line {reader.line_num}): {exc}") from None
    return rows, errors


def machine_dict(machine: Machine) -> dict[str, Any]:
    """The registry's view of a machine (no secret, not even its hash)."""
    return {
        "chassisId": machine.chassis_id,
        "name": machine.name,
        "model": machine.model,
        "tags": list(machine.tags or []),
        "location": machine.location,
        "disabled": machine.disabled,
        "hasSecret": machine.secret_hash is not None,
        "created": machine.created_ms,
    }


def _spec_of(machine: Machine) -> MachineSpec:
    return MachineSpec(
        machine.name, machine.model, tuple(machine.tags or ()), machine.location, machine.disabled
    )


class Registry:
    """Machine CRUD on the metadata database (callers invalidate the catalog afterwards)."""

    def __init__(self, meta: Metadata) -> None:
        self.meta = meta

    async def create(self, org: str, chassis: str, spec: MachineSpec) -> Machine:
        """A new machine; :class:`Conflict` when the chassis id is taken in ``org``."""
        check_chassis(chassis)
        spec = check_spec(spec)
        async with self.meta.session() as s:
            if await s.get(Machine, (org, chassis)) is not None:
                raise Conflict(f"machine {chassis!r} already exists")
            machine = Machine(org_id=org, chassis_id=chassis, created_ms=int(time.time() * 1000))
            self._apply(machine, spec)
            s.add(machine)
            await self._ensure_model(s, org, spec.model)
        return machine

    async def update(self, org: str, chassis: str, changes: dict[str, Any]) -> Machine:
        """Change some of name, model, tags, location, disabled; the rest stays."""
        async with self.meta.session() as s:
            machine = await s.get(Machine, (org, chassis))
            if machine is None:
                raise NotFound(f"machine {chassis!r} not found")
            spec = check_spec(replace(_spec_of(machine), **changes))
            self._apply(machine, spec)
            await self._ensure_model(s, org, spec.model)
        return machine

    async def delete(self, org: str, chassis: str) -> None:
        """Remove the machine and its remembered field names (not its stored telemetry)."""
        async with self.meta.session() as s:
            machine = await s.get(Machine, (org, chassis))
            if machine is None:
                raise NotFound(f"machine {chassis!r} not found")
            await s.delete(machine)
            await s.execute(
                delete(MachineField).where(
                    MachineField.org_id == org, MachineField.chassis_id == chassis
                )
            )

    async def import_rows(
        self, org: str, rows: list[tuple[int, str, MachineSpec]], errors: list[dict[str, Any]]
    ) -> ImportReport:
        """Apply checked CSV rows in one transaction: create, update or leave alone each.

        A row keeps the machine's ``disabled`` flag (the CSV has no such column)."""
        report = ImportReport(errors=list(errors))
        async with self.meta.session() as s:
            existing = {
                m.chassis_id: m
                for m in (await s.scalars(select(Machine).where(Machine.org_id == org))).all()
            }
            now = int(time.time() * 1000)
            for _line, chassis, spec in rows:
                machine = existing.get(chassis)
                if machine is None:
                    machine = Machine(org_id=org, chassis_id=chassis, created_ms=now)
                    self._apply(machine, spec)
                    s.add(machine)
                    existing[chassis] = machine
                    report.created.append(chassis)
                else:
                    spec = replace(spec, disabled=machine.disabled)
                    if spec == _spec_of(machine):
                        report.unchanged.append(chassis)
                        continue
                    self._apply(machine, spec)
                    report.updated.append(chassis)
                await self._ensure_model(s, org, spec.model)
        report.errors.sort(key=lambda e: e["line"])
        return report

    @staticmethod
    def _apply(machine: Machine, spec: MachineSpec) -> None:
        machine.name, machine.model = spec.name, spec.model
        machine.tags, machine.location = list(spec.tags), spec.location
        machine.disabled = spec.disabled

    @staticmethod
    async def _ensure_model(s: Any, org: str, model: str) -> None:
        if await s.get(MachineModel, (org, model)) is None:
            s.add(MachineModel(org_id=org, name=model, dbc_id=None))
            await s.flush()


def check_org_name(name: str) -> str:
    name = _printable(name, "organisation name", MAX_NAME)
    if not name:
        raise InputError("organisation name is empty")
    return name


async def create_org(meta: Metadata, org_id: str, name: str) -> Org:
    """A new organisation; :class:`Conflict` when the id is taken."""
    if not valid_id(org_id):
        raise InputError(f"{org_id[:80]!r} is not a valid organisation id")
    org = Org(id=org_id, name=check_org_name(name))
    async with meta.session() as s:
        if await s.get(Org, org_id) is not None:
            raise Conflict(f"organisation {org_id!r} already exists")
        s.add(org)
    return org


async def rename_org(meta: Metadata, org_id: str, name: str) -> Org:
    name = check_org_name(name)
    async with meta.session() as s:
        org = await s.get(Org, org_id)
        if org is None:
            raise NotFound(f"organisation {org_id!r} not found")
        org.name = name
    return org


MIN_GRACE_S = 1
MAX_GRACE_S = 86_400


def check_timezone(zone: str | None) -> str | None:
    """An IANA time zone name (``Europe/Berlin``) or ``None``/empty for none."""
    if not zone:
        return None
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"{zone[:80]!r} is not an IANA time zone (like Europe/Berlin)") from None
    return zone


def org_dict(org: Org) -> dict[str, Any]:
    """An organisation and its settings as the API shows them."""
    return {
        "id": org.id,
        "name": org.name,
        "timezone": org.timezone,
        "followViewers": bool(org.follow_viewers),
        "viewerGraceSeconds": org.viewer_grace_s,
    }


async def update_org(
    meta: Metadata,
    org_id: str,
    *,
    name: str | None = None,
    timezone: str | None = None,
    follow_viewers: bool | None = None,
    viewer_grace_s: int | None = None,
    clear_timezone: bool = False,
) -> Org:
    """Change some of an organisation's settings (``None``: leave as is); checks each first."""
    name = check_org_name(name) if name is not None else None
    timezone = check_timezone(timezone)
    if viewer_grace_s is not None and not MIN_GRACE_S <= viewer_grace_s <= MAX_GRACE_S:
        raise InputError(f"viewer grace time must be {MIN_GRACE_S} … {MAX_GRACE_S} seconds")
    async with meta.session() as s:
        org = await s.get(Org, org_id)
        if org is None:
            raise NotFound(f"organisation {org_id!r} not found")
        if name is not None:
            org.name = name
        if timezone is not None or clear_timezone:
            org.timezone = timezone
        if follow_viewers is not None:
            org.follow_viewers = follow_viewers
        if viewer_grace_s is not None:
            org.viewer_grace_s = viewer_grace_s
    return org


async def list_models(meta: Metadata, org: str) -> list[tuple[MachineModel, list[str]]]:
    """The organisation's models with the chassis ids of their machines, by name."""
    async with meta.session() as s:
        models = (
            await s.scalars(
                select(MachineModel).where(MachineModel.org_id == org).order_by(MachineModel.name)
            )
        ).all()
        rows = await s.execute(
            select(Machine.model, Machine.chassis_id)
            .where(Machine.org_id == org)
            .order_by(Machine.chassis_id)
        )
        machines: dict[str, list[str]] = {}
        for model, chassis in rows.all():
            machines.setdefault(model, []).append(chassis)
    return [(m, machines.get(m.name, [])) for m in models]


async def create_model(meta: Metadata, org: str, name: str) -> MachineModel:
    """A new, empty model; :class:`Conflict` when it exists."""
    if not valid_id(name):
        raise InputError(f"model {name[:80]!r} is not valid: 1-64 letters, digits, '_', '.', '-'")
    async with meta.session() as s:
        if await s.get(MachineModel, (org, name)) is not None:
            raise Conflict(f"model {name!r} already exists")
        model = MachineModel(org_id=org, name=name, dbc_id=None)
        s.add(model)
    return model
