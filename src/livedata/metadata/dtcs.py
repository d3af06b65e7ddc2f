"""The DTC log: every diagnostic trouble code a machine reported, in the metadata database.

One table, ``dtcs`` (migration ``0006_dtcs``): organisation, machine, the ECU's
source address, SPN, FMI, occurrence count, the lamps of the DM1 that last
changed it, ``since_ms`` (became active) and ``cleared_ms`` (``NULL`` while
active).  A DTC that becomes active again after clearing is a new row.  Written
by :class:`~livedata.pipeline.dtcs.DtcService` only on changes (a DM1 repeated
every second with the same codes writes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, select, update
from sqlalchemy.orm import Mapped, mapped_column

from livedata.decode.dm1 import FMI_TEXT, SPN_NAMES
from livedata.metadata import Metadata
from livedata.metadata.tables import Base

if TYPE_CHECKING:
    from livedata.pipeline.dtcs import DtcChange

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


@dataclass
class DtcLog:
    meta: Metadata

    async def active(self, org_id: str, chassis: str) -> dict[tuple[int, int, int], int]:
        """The machine's active DTCs: (source address, SPN, FMI) -> occurrence count."""
        async with self.meta.session() as s:
            rows = await s.scalars(
                select(DtcRow).where(
                    DtcRow.org_id == org_id,
                    DtcRow.chassis_id == chassis,
                    DtcRow.cleared_ms.is_(None),
                )
            )
            return {(r.sa, r.spn, r.fmi): r.oc for r in rows}

    async def apply(self, org_id: str, chassis: str, changes: Sequence[DtcChange]) -> None:
        """Write a batch of changes in one transaction."""
        async with self.meta.session() as s:
            for c in changes:
                if c.kind == "active":
                    s.add(
                        DtcRow(
                            org_id=org_id,
                            chassis_id=chassis,
                            sa=c.sa,
                            spn=c.spn,
                            fmi=c.fmi,
                            oc=c.oc,
                            lamps=c.lamps,
                            since_ms=c.ts,
                        )
                    )
                    continue
                done = {"cleared_ms": c.ts} if c.kind == "cleared" else {"oc": c.oc}
                await s.execute(
                    update(DtcRow)
                    .where(
                        DtcRow.org_id == org_id,
                        DtcRow.chassis_id == chassis,
                        DtcRow.sa == c.sa,
                        DtcRow.spn == c.spn,
                        DtcRow.fmi == c.fmi,
                        DtcRow.cleared_ms.is_(None),
                    )
                    .values(lamps=c.lamps, **done)
                )

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
