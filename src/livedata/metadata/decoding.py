"""Which DBC version decoded which time range of each machine, in the metadata database.

One table, ``decode_ranges`` (migration ``0008_decode_ranges``): organisation,
machine, the DBC file (its id, and its name so a deleted file stays readable),
``from_ms``/``to_ms`` (inclusive, record timestamps) and who wrote it -- ``ingest``
(the DBC assigned while the data arrived; see
:class:`~livedata.pipeline.rawframes.DecodeRanges`) or ``redecode``.  Rows may
overlap: a later row (higher id) is the truth where they do, so a re-decoded hour
simply adds a row over the ingest row it corrects.  :func:`paint` turns the rows
into the machine's timeline (sans I/O): non-overlapping ranges, adjacent ones of
the same DBC merged.

Bounded: :func:`machine_ranges` reads a machine's newest :data:`MAX_ROWS` rows;
retention (:func:`delete_ranges_before`) drops rows that end before the values'
retention cutoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from livedata.metadata import Metadata
from livedata.metadata.tables import Base

MAX_ROWS = 1_000
"""Rows of one machine read to paint its timeline (the newest)."""


class DecodeRangeRow(Base):
    __tablename__ = "decode_ranges"
    __table_args__ = (Index("ix_decode_ranges_machine", "org_id", "chassis_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    chassis_id: Mapped[str] = mapped_column(String(64))
    dbc_id: Mapped[int | None] = mapped_column(
        ForeignKey("dbc_files.id", ondelete="SET NULL"), nullable=True
    )
    dbc_name: Mapped[str] = mapped_column(String(200))
    from_ms: Mapped[int] = mapped_column(BigInteger)
    to_ms: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))


@dataclass(frozen=True, slots=True)
class DecodeRange:
    """One stretch of a machine's timeline decoded with one DBC file."""

    from_ms: int
    to_ms: int
    dbc_id: int | None
    dbc_name: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.from_ms,
            "to": self.to_ms,
            "dbcId": self.dbc_id,
            "dbc": self.dbc_name,
            "source": self.source,
        }


def paint(rows: Sequence[DecodeRange]) -> list[DecodeRange]:
    """The timeline of ``rows`` given oldest-written first: each row is laid over the
    ones before it; the result is sorted, non-overlapping, and adjacent ranges of the
    same DBC and source are merged (also across a gap without data)."""
    timeline: list[DecodeRange] = []
    for row in rows:
        kept: list[DecodeRange] = []
        for r in timeline:
            if r.to_ms < row.from_ms or r.from_ms > row.to_ms:
                kept.append(r)
                continue
            if r.from_ms < row.from_ms:
                kept.append(DecodeRange(r.from_ms, row.from_ms - 1, r.dbc_id, r.dbc_name, r.source))
            if r.to_ms > row.to_ms:
                kept.append(DecodeRange(row.to_ms + 1, r.to_ms, r.dbc_id, r.dbc_name, r.source))
        kept.append(row)
        timeline = kept
    timeline.sort(key=lambda r: r.from_ms)
    merged: list[DecodeRange] = []
    for r in timeline:
        last = merged[-1] if merged else None
        if last is not None and (last.dbc_id, last.dbc_name, last.source) == (
            r.dbc_id,
            r.dbc_name,
            r.source,
        ):
            merged[-1] = DecodeRange(last.from_ms, r.to_ms, r.dbc_id, r.dbc_name, r.source)
        else:
            merged.append(r)
    return merged


async def add_range(
    meta: Metadata,
    org: str,
    chassis: str,
    dbc_id: int | None,
    dbc_name: str,
    from_ms: int,
    to_ms: int,
    source: str,
) -> int:
    """Insert one row; its id."""
    made = DecodeRange(from_ms, to_ms, dbc_id, dbc_name, source)
    (row_id,) = await add_ranges(meta, [(org, chassis, made)])
    return row_id


async def add_ranges(meta: Metadata, rows: Sequence[tuple[str, str, DecodeRange]]) -> list[int]:
    """Insert ``(org, chassis, range)`` rows in one transaction; their ids, in order."""
    if not rows:
        return []
    made = [
        DecodeRangeRow(
            org_id=org,
            chassis_id=chassis,
            dbc_id=r.dbc_id,
            dbc_name=r.dbc_name,
            from_ms=r.from_ms,
            to_ms=r.to_ms,
            source=r.source,
        )
        for org, chassis, r in rows
    ]
    async with meta.session() as s:
        s.add_all(made)
        await s.flush()
        return [row.id for row in made]


async def extend_ranges(meta: Metadata, spans: Sequence[tuple[int, int, int]]) -> None:
    """Set ``(id, from_ms, to_ms)`` of existing rows: one statement executed for all of them
    (the driver's ``executemany``), in one transaction.

    An ingest process moves the end of every machine's row every few seconds, so this runs
    for the whole fleet at once: one ORM statement per row cost 0.4 ms of CPU each on
    PostgreSQL (``bench/bench_storecost.py``)."""
    if not spans:
        return
    async with meta.session() as s:
        await s.execute(_EXTEND, [{"row": r, "lo": lo, "hi": hi} for r, lo, hi in spans])


_TABLE = cast(Table, DecodeRangeRow.__table__)
_EXTEND = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("row"))
    .values(from_ms=bindparam("lo"), to_ms=bindparam("hi"))
)


async def machine_ranges(meta: Metadata, org: str, chassis: str) -> list[DecodeRange]:
    """The machine's timeline (:func:`paint` of its newest :data:`MAX_ROWS` rows)."""
    async with meta.session() as s:
        rows = (
            await s.scalars(
                select(DecodeRangeRow)
                .where(DecodeRangeRow.org_id == org, DecodeRangeRow.chassis_id == chassis)
                .order_by(DecodeRangeRow.id.desc())
                .limit(MAX_ROWS)
            )
        ).all()
    return paint(
        [DecodeRange(r.from_ms, r.to_ms, r.dbc_id, r.dbc_name, r.source) for r in reversed(rows)]
    )


async def delete_ranges_before(meta: Metadata, ts_ms: int) -> int:
    """Retention: delete the rows that end before ``ts_ms``; how many."""
    async with meta.session() as s:
        result = await s.execute(delete(DecodeRangeRow).where(DecodeRangeRow.to_ms < ts_ms))
        return int(getattr(result, "rowcount", 0) or 0)
