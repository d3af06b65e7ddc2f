"""The command log: every direct method sent to a machine, in the metadata database.

One table, ``commands`` (migration ``0003_commands``): organisation, machine,
method, payload, who asked (the user's name), when
(``created_ms``), how long the whole call took (``duration_ms``), the ``outcome``
(``ok`` — the device answered, whatever its status —, ``DeviceNotConnected``,
``GatewayTimeout`` or ``error``) and the device's ``status`` and ``result``
payload when it answered, and the ``reason`` of a command the server sent by itself
(``viewers``: :mod:`livedata.follow`; migration ``0008``).  Rows are never updated; :meth:`CommandLog.recent`
lists a machine's newest first, at most :data:`MAX_LIST` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from livedata.metadata import Metadata
from livedata.metadata.tables import Base

MAX_LIST = 500


class Command(Base):
    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_device", "org_id", "chassis_id", "created_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    chassis_id: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(64))
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    """Why the server sent it by itself (``viewers``); ``None`` when a user asked (0008)."""


def command_dict(row: Command) -> dict[str, Any]:
    return {
        "id": row.id,
        "deviceId": row.chassis_id,
        "methodName": row.method,
        "payload": row.payload,
        "requestedBy": row.requested_by,
        "createdMs": row.created_ms,
        "durationMs": row.duration_ms,
        "outcome": row.outcome,
        "status": row.status,
        "result": row.result,
        "reason": row.reason,
    }


@dataclass
class CommandLog:
    meta: Metadata

    async def record(self, **values: Any) -> Command:
        row = Command(**values)
        async with self.meta.session() as s:
            s.add(row)
        return row

    async def recent(self, org_id: str, chassis: str, limit: int = 50) -> list[Command]:
        limit = max(1, min(limit, MAX_LIST))
        async with self.meta.session() as s:
            query = (
                select(Command)
                .where(Command.org_id == org_id, Command.chassis_id == chassis)
                .order_by(Command.created_ms.desc(), Command.id.desc())
                .limit(limit)
            )
            return list((await s.scalars(query)).all())
