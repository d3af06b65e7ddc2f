"""The DTC log: every diagnostic trouble code a machine reported, in the metadata database.

One table, ``dtcs`` (migration ``0006_dtcs``): organisation, machine, the ECU's
source address, SPN, FMI, occurrence count, the lamps of the DM1 that last
changed it, ``since_ms`` (became active) and ``cleared_ms`` (``NULL`` while
active).  A DTC that becomes active again after clearing is a new row.  Written
by :class:`~livedata.pipeline.dtcs.DtcService` only on changes (a DM1 repeated
every second with the same codes writes nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from livedata.decode.dm1 import FMI_TEXT, SPN_NAMES
from livedata.metadata import Metadata
from livedata.metadata.tables import Base

if TYPE_CHECKING:
    from livedata.pipeline.dtcs import DtcChange, Key

MAX_RECENT = 500


class DtcRow(Base):
    __tablename__ = "dtcs"
    __table_args__ = (Index("ix_dtcs_machine", "org_id", "chassis_id", "cleared_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    chassis_id: Mapped[str] = mapped_column(String(64))
    sa: Mapped[int] = mapped_column(Integer)
    spn: Mapped[int] = mapped_column(Integer)
    fmi: Mapped[int] = mapped_column(Integer)
    oc: Mapped[int] = mapped_column(Integer)
    lamps: Mapped[Any] = mapped_column(JSON, nullable=True)
    since_ms: Mapped[int] = mapped_column(BigInteger)
    cleared_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


def dtc_dict(row: DtcRow, names: dict[int, str] | None = None) -> dict[str, Any]:
    """The API form; ``name`` from ``names`` (a DBC's SPNs) or the shipped SPN table."""
    name = (names or {}).get(row.spn) or SPN_NAMES.get(row.spn)
    return {
        "sa": row.sa,
        "spn": row.spn,
        "fmi": row.fmi,
        "fmiText": FMI_TEXT.get(row.fmi),
        "oc": row.oc,
        "lamp": row.lamps,
        "since": row.since_ms,
        "clearedAt": row.cleared_ms,
        "active": row.cleared_ms is None,
        "name": name,
    }


LOAD_CHUNK = 500
"""Machines whose active DTCs one ``SELECT`` loads (bounds its ``IN`` list)."""

Machine = tuple[str, str]
"""(organisation, machine)."""

_TABLE = cast(Table, DtcRow.__table__)
_UPDATE = (
    update(_TABLE)
    .where(
        _TABLE.c.org_id == bindparam("w_org"),
        _TABLE.c.chassis_id == bindparam("w_chassis"),
        _TABLE.c.sa == bindparam("w_sa"),
        _TABLE.c.spn == bindparam("w_spn"),
        _TABLE.c.fmi == bindparam("w_fmi"),
        _TABLE.c.cleared_ms.is_(None),
    )
    .values(oc=bindparam("oc"), lamps=bindparam("lamps"), cleared_ms=bindparam("cleared_ms"))
)
"""The change of a row active before the batch (count, lamps, clearing): one for all."""


def _rows(
    changes: Sequence[tuple[str, str, DtcChange]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``changes`` (in order) as the parameters of :data:`_UPDATE` (rows active before
    them) and of one ``INSERT`` (rows they start): each row's changes folded into its
    final count, lamps and clearing, so the statements need no order among themselves."""
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    open_rows: dict[tuple[str, str, int, int, int], dict[str, Any]] = {}
    for org, chassis, c in changes:
        key = (org, chassis, c.sa, c.spn, c.fmi)
        if c.kind == "active":
            row = open_rows[key] = {
                "org_id": org,
                "chassis_id": chassis,
                "sa": c.sa,
                "spn": c.spn,
                "fmi": c.fmi,
                "oc": c.oc,
                "lamps": c.lamps,
                "since_ms": c.ts,
                "cleared_ms": None,
            }
            inserts.append(row)
            continue
        found = open_rows.get(key)
        if found is None:  # active before the batch: its row is updated
            found = open_rows[key] = {
                "w_org": org,
                "w_chassis": chassis,
                "w_sa": c.sa,
                "w_spn": c.spn,
                "w_fmi": c.fmi,
                "cleared_ms": None,
            }
            updates.append(found)
        found["oc"] = c.oc
        found["lamps"] = c.lamps
        if c.kind == "cleared":
            found["cleared_ms"] = c.ts
            del open_rows[key]
    return updates, inserts


@dataclass
class DtcLog:
    meta: Metadata

    async def active(self, machines: Iterable[Machine]) -> dict[Machine, dict[Key, int]]:
        """Each machine's active DTCs: (source address, SPN, FMI) -> occurrence count
        (``{}`` for one without), read in one transaction with one ``SELECT`` per
        organisation and :data:`LOAD_CHUNK` machines (ingest loads the machines of a
        batch it sees for the first time together: a thousand at start-up)."""
        out: dict[Machine, dict[Key, int]] = {m: {} for m in machines}
        if not out:
            return out
        by_org: dict[str, list[str]] = {}
        for org, chassis in out:
            by_org.setdefault(org, []).append(chassis)
        async with self.meta.session() as s:
            for org, chassis_ids in by_org.items():
                for at in range(0, len(chassis_ids), LOAD_CHUNK):
                    rows = await s.execute(
                        select(
                            DtcRow.chassis_id, DtcRow.sa, DtcRow.spn, DtcRow.fmi, DtcRow.oc
                        ).where(
                            DtcRow.org_id == org,
                            DtcRow.chassis_id.in_(chassis_ids[at : at + LOAD_CHUNK]),
                            DtcRow.cleared_ms.is_(None),
                        )
                    )
                    for chassis, sa, spn, fmi, oc in rows:
                        out[org, chassis][sa, spn, fmi] = oc
        return out

    async def apply(self, changes: Sequence[tuple[str, str, DtcChange]]) -> None:
        """Write ``(organisation, machine, change)``s, in their order, in one transaction:
        one ``UPDATE`` executed for all rows active before them and one ``INSERT`` for all
        rows they start (each the driver's ``executemany``), whatever the machines.

        Ingest writes the changes of a whole batch at once: one transaction per change cost
        1-3 ms of ingest's CPU each, 0.03-0.05 ms now (``bench/bench_dtc.py``, 200 changes
        per batch, SQLite and PostgreSQL)."""
        updates, inserts = _rows(changes)
        if not updates and not inserts:
            return
        async with self.meta.session() as s:
            if updates:
                await s.execute(_UPDATE, updates)
            if inserts:
                await s.execute(insert(_TABLE), inserts)

    async def listing(
        self, org_id: str, chassis: str, limit: int = 50
    ) -> tuple[list[DtcRow], list[DtcRow]]:
        """(active DTCs, oldest first; the ``limit`` most recently cleared, newest first)."""
        limit = max(1, min(limit, MAX_RECENT))
        mine = (DtcRow.org_id == org_id, DtcRow.chassis_id == chassis)
        async with self.meta.session() as s:
            active = await s.scalars(
                select(DtcRow)
                .where(*mine, DtcRow.cleared_ms.is_(None))
                .order_by(DtcRow.since_ms, DtcRow.id)
            )
            cleared = await s.scalars(
                select(DtcRow)
                .where(*mine, DtcRow.cleared_ms.is_not(None))
                .order_by(DtcRow.cleared_ms.desc(), DtcRow.id.desc())
                .limit(limit)
            )
            return list(active.all()), list(cleared.all())
