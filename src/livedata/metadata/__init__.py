"""The metadata database: organisations, machines, DBC files, groups.

SQLAlchemy (async) on SQLite in the embedded shape and PostgreSQL in the
distributed one; the schema is kept by Alembic migrations, applied at start.
Driver errors are mapped to :class:`~livedata.errors.BackendError`; missing or
foreign objects raise :class:`~livedata.errors.NotFound`, so a caller never learns
whether an id exists in another organisation.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, delete, event, func, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from livedata.backends import redact
from livedata.errors import BackendError, Conflict, InputError, NotFound
from livedata.metadata.tables import DbcFile, Group, Machine, MachineField, MachineModel, Org

MIGRATIONS = Path(__file__).parent / "migrations"


def async_url(url: str) -> str:
    """Map our metadata URL to SQLAlchemy's async driver URL."""
    scheme, _, rest = url.partition("://")
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}[
        scheme.split("+")[0]
    ]
    return f"{driver}://{rest}"


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """What a user sets on a line group."""

    name: str
    msg_type: str
    fields: list[str]
    unit: str
    model: str | None = None
    """The model whose machines show the group; ``None``: every machine."""


def group_dict(group: Group) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "msgType": group.msg_type,
        "fields": list(group.fields),
        "unit": group.unit,
        "model": group.model,
    }


MIGRATION_LOCK = 0x6C697665  # "live": the advisory lock that serialises migrations


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # several processes may start at once: one migrates, the others wait and find it done
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


_DECODING_COLUMNS = (
    Machine.chassis_id,
    Machine.name,
    Machine.model,
    Machine.dbc_id,
    Machine.tags,
    Machine.location,
    Machine.disabled,
)
"""The columns of a machine :meth:`Metadata.org_decoding` reads."""


class Metadata:
    """Access to the metadata database; one per process, shared by the roles."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # a server database restarted (or a connection dropped by a proxy) leaves dead
        # connections in the pool: each is checked on checkout (one round trip) and
        # replaced, instead of failing the first request that draws it
        self.engine = create_async_engine(
            async_url(url), pool_pre_ping=not url.startswith("sqlite")
        )
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def start(self) -> None:
        """Create or upgrade the schema (safe when several processes start at once)."""
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(_upgrade)
        except SQLAlchemyError as exc:
            raise BackendError(f"metadata database {redact(self.url)}: {exc}") from exc

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except IntegrityError as exc:
            raise Conflict(f"conflicts with stored data: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise BackendError(f"metadata database error: {exc}") from exc
        except OSError as exc:  # the driver's connect, e.g. refused while the server restarts
            raise BackendError(f"metadata database unreachable: {exc}") from exc
        except OverflowError as exc:  # an id beyond the column (SQLite: 64 bits): the caller's
            raise InputError(f"a number is out of range: {exc}") from exc

    @property
    def _insert(self) -> Any:
        """The dialect's ``insert`` (the one with ``on_conflict_do_…``)."""
        return sqlite_insert if self.engine.dialect.name == "sqlite" else postgresql_insert

    # organisations -------------------------------------------------------------

    async def ensure_org(self, org_id: str, name: str, follow_viewers: bool = False) -> None:
        """Create the organisation unless it exists (an existing one keeps its settings)."""
        async with self.session() as s:
            if await s.get(Org, org_id) is None:
                s.add(Org(id=org_id, name=name, follow_viewers=follow_viewers))

    async def list_orgs(self) -> list[Org]:
        async with self.session() as s:
            return list((await s.scalars(select(Org).order_by(Org.id))).all())

    async def require_org(self, org_id: str) -> Org:
        async with self.session() as s:
            org = await s.get(Org, org_id)
        if org is None:
            raise NotFound(f"organisation {org_id!r} not found")
        return org

    # DBC files ----------------------------------------------------------------

    async def add_dbc(
        self,
        org_id: str,
        name: str,
        content: str,
        *,
        j1939: bool | None = None,
        separate_sources: bool = False,
    ) -> DbcFile:
        dbc = DbcFile(
            org_id=org_id,
            name=name,
            content=content,
            created_ms=int(time.time() * 1000),
            j1939=j1939,
            separate_sources=separate_sources,
        )
        async with self.session() as s:
            s.add(dbc)
        return dbc

    async def list_dbc(self, org_id: str) -> list[DbcFile]:
        async with self.session() as s:
            rows = await s.scalars(
                select(DbcFile).where(DbcFile.org_id == org_id).order_by(DbcFile.id)
            )
            return list(rows.all())

    async def get_dbc(self, org_id: str, dbc_id: int) -> DbcFile:
        async with self.session() as s:
            dbc = await s.get(DbcFile, dbc_id)
        if dbc is None or dbc.org_id != org_id:
            raise NotFound(f"DBC file {dbc_id} not found")
        return dbc

    async def find_dbc(self, org_id: str, name: str) -> DbcFile | None:
        async with self.session() as s:
            query = select(DbcFile).where(DbcFile.org_id == org_id, DbcFile.name == name)
            return (await s.scalars(query.order_by(DbcFile.id.desc()))).first()

    async def assign_model_dbc(self, org_id: str, model: str, dbc_id: int | None) -> None:
        if dbc_id is not None:
            await self.get_dbc(org_id, dbc_id)
        async with self.session() as s:
            row = await s.get(MachineModel, (org_id, model))
            if row is None:
                s.add(MachineModel(org_id=org_id, name=model, dbc_id=dbc_id))
            else:
                row.dbc_id = dbc_id

    async def assign_machine_dbc(self, org_id: str, chassis: str, dbc_id: int | None) -> None:
        if dbc_id is not None:
            await self.get_dbc(org_id, dbc_id)
        async with self.session() as s:
            machine = await s.get(Machine, (org_id, chassis))
            if machine is None:
                raise NotFound(f"machine {chassis!r} not found")
            machine.dbc_id = dbc_id

    async def org_decoding(self, org_id: str) -> list[tuple[Any, DbcFile | None]]:
        """Every machine of an organisation with the DBC it is decoded with, in three queries.

        A machine is a row of the columns of :data:`_DECODING_COLUMNS` (read by name, as
        a :class:`Machine`'s), not an ORM object: ingest's catalog reloads a fleet every
        10 s, and building 5,000 ORM objects (identity map, state) cost twice the CPU of
        the rows."""
        async with self.session() as s:
            machines = list(
                (await s.execute(select(*_DECODING_COLUMNS).where(Machine.org_id == org_id))).all()
            )
            models = {
                m.name: m.dbc_id
                for m in (
                    await s.scalars(select(MachineModel).where(MachineModel.org_id == org_id))
                ).all()
            }
            dbc_of = {m.chassis_id: m.dbc_id or models.get(m.model) for m in machines}
            wanted = {d for d in dbc_of.values() if d is not None}
            files = {}
            if wanted:
                query = select(DbcFile).where(DbcFile.id.in_(wanted))
                files = {d.id: d for d in (await s.scalars(query)).all()}
        return [(m, files.get(dbc_of[m.chassis_id] or -1)) for m in machines]

    # machines -----------------------------------------------------------------

    async def upsert_machine(self, org_id: str, chassis: str, name: str, model: str) -> None:
        """Create the machine, or set its name and model (see :meth:`upsert_machines`)."""
        await self.upsert_machines(org_id, [(chassis, name, model)])

    async def upsert_machines(self, org_id: str, machines: Iterable[tuple[str, str, str]]) -> None:
        """Create each ``(chassis, name, model)`` machine, or set the name and model of one
        that exists (its tags, location, DBC, secret and ``disabled`` stay); each model
        named is created unless it exists.  Two statements (executemany) in one
        transaction whatever the count: 5,000 machines take one round trip per statement
        instead of a session each, and a failure leaves none of them written."""
        rows = [
            {"org_id": org_id, "chassis_id": chassis, "name": name, "model": model}
            for chassis, name, model in machines
        ]
        if not rows:
            return
        models = [
            {"org_id": org_id, "name": model, "dbc_id": None}
            for model in dict.fromkeys(row["model"] for row in rows)
        ]
        upsert = self._insert(Machine)
        upsert = upsert.on_conflict_do_update(
            index_elements=[Machine.org_id, Machine.chassis_id],
            set_={"name": upsert.excluded.name, "model": upsert.excluded.model},
        )
        async with self.session() as s:
            await s.execute(self._insert(MachineModel).on_conflict_do_nothing(), models)
            await s.execute(upsert, rows)

    async def list_machines(self, org_id: str) -> list[Machine]:
        async with self.session() as s:
            query = select(Machine).where(Machine.org_id == org_id).order_by(Machine.chassis_id)
            return list((await s.scalars(query)).all())

    async def get_machine(self, org_id: str, chassis: str) -> Machine:
        async with self.session() as s:
            machine = await s.get(Machine, (org_id, chassis))
        if machine is None:
            raise NotFound(f"machine {chassis!r} not found in organisation {org_id!r}")
        return machine

    async def add_fields(
        self, org_id: str, chassis: str, msg_type: str, fields: Iterable[str]
    ) -> None:
        """Remember field names; names already stored are left alone (one statement)."""
        await self.add_fields_many(org_id, [(chassis, msg_type, name) for name in fields])

    async def add_fields_many(self, org_id: str, fields: Iterable[tuple[str, str, str]]) -> None:
        """Remember ``(chassis, msg_type, field)`` names of several machines in one
        statement (executemany); names already stored are left alone.  One transaction
        for a thousand machines costs about what three of one machine each do."""
        rows = [
            {"org_id": org_id, "chassis_id": chassis, "msg_type": msg_type, "field": name}
            for chassis, msg_type, name in fields
        ]
        if not rows:
            return
        async with self.session() as s:
            await s.execute(self._insert(MachineField).on_conflict_do_nothing(), rows)

    async def org_fields(self, org_id: str) -> dict[tuple[str, str], set[str]]:
        """Every remembered field of an organisation by (chassis, message type), in one query."""
        async with self.session() as s:
            query = select(
                MachineField.chassis_id, MachineField.msg_type, MachineField.field
            ).where(MachineField.org_id == org_id)
            fields: dict[tuple[str, str], set[str]] = {}
            for chassis, msg_type, name in (await s.execute(query)).all():
                fields.setdefault((chassis, msg_type), set()).add(name)
            return fields

    async def delete_field(self, org_id: str, chassis: str, msg_type: str, name: str) -> bool:
        """Forget one remembered field; whether it was there."""
        async with self.session() as s:
            result = await s.execute(
                delete(MachineField).where(
                    MachineField.org_id == org_id,
                    MachineField.chassis_id == chassis,
                    MachineField.msg_type == msg_type,
                    MachineField.field == name,
                )
            )
        return bool(getattr(result, "rowcount", 0))

    async def list_fields(self, org_id: str, chassis: str, msg_type: str) -> list[str]:
        async with self.session() as s:
            query = (
                select(MachineField.field)
                .where(
                    MachineField.org_id == org_id,
                    MachineField.chassis_id == chassis,
                    MachineField.msg_type == msg_type,
                )
                .order_by(MachineField.field)
            )
            return list((await s.scalars(query)).all())

    # groups -------------------------------------------------------------------

    async def list_groups(self, org_id: str) -> list[Group]:
        async with self.session() as s:
            query = select(Group).where(Group.org_id == org_id).order_by(Group.position)
            return list((await s.scalars(query)).all())

    async def create_group(self, org_id: str, spec: GroupSpec) -> Group:
        async with self.session() as s:
            last = await s.scalar(select(func.max(Group.position)).where(Group.org_id == org_id))
            group = Group(
                id=uuid.uuid4().hex[:12],
                org_id=org_id,
                name=spec.name,
                msg_type=spec.msg_type,
                fields=spec.fields,
                unit=spec.unit,
                position=(last or 0) + 1,
                model=spec.model,
            )
            s.add(group)
        return group

    async def update_group(self, org_id: str, group_id: str, spec: GroupSpec) -> Group:
        async with self.session() as s:
            group = await s.get(Group, group_id)
            if group is None or group.org_id != org_id:
                raise NotFound(f"group {group_id!r} not found")
            group.name, group.msg_type = spec.name, spec.msg_type
            group.fields, group.unit = list(spec.fields), spec.unit
            group.model = spec.model
        return group

    async def delete_group(self, org_id: str, group_id: str) -> None:
        async with self.session() as s:
            result = await s.execute(
                delete(Group).where(Group.id == group_id, Group.org_id == org_id)
            )
        if not getattr(result, "rowcount", 0):
            raise NotFound(f"group {group_id!r} not found")

    async def ensure_groups(self, org_id: str, specs: Sequence[GroupSpec]) -> None:
        """Create ``specs`` when the organisation has no groups yet (the demo's defaults)."""
        if not await self.list_groups(org_id):
            for spec in specs:
                await self.create_group(org_id, spec)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy's recipe for transactional DDL on SQLite: the driver must not manage
    # transactions itself; every transaction starts with BEGIN IMMEDIATE (below), so two
    # processes starting at once serialise their migrations instead of colliding.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    for attempt in range(100):  # switching to WAL answers "locked" without waiting
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.05)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
