"""Metadata tables (SQLAlchemy): organisations, machines, DBC files and their assignments, groups.

Telemetry is not here; it lives in the store.  The schema is created and upgraded
by the Alembic migrations beside this file.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Org(Base):
    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)
    """The organisation's IANA time zone, offered on the Live Data page (migration 0008)."""
    follow_viewers: Mapped[bool] = mapped_column(Boolean, default=False)
    """Real-time streams follow the viewers (:mod:`livedata.follow`, migration 0008)."""
    viewer_grace_s: Mapped[int] = mapped_column(Integer, default=300)
    """Seconds after the last viewer left before the stream is stopped (migration 0008)."""


class DbcFile(Base):
    __tablename__ = "dbc_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    j1939: Mapped[bool | None] = mapped_column(Boolean, nullable=True, default=None)
    """Match frames by J1939 parameter group: ``None`` = as the DBC says (migration 0006)."""
    separate_sources: Mapped[bool] = mapped_column(Boolean, default=False)
    """J1939: other source addresses write ``<signal>.0x<SA>`` fields (migration 0006)."""


class MachineModel(Base):
    """A machine model and the DBC file its machines are decoded with."""

    __tablename__ = "machine_models"

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    dbc_id: Mapped[int | None] = mapped_column(ForeignKey("dbc_files.id", ondelete="SET NULL"))


class Machine(Base):
    __tablename__ = "machines"

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    chassis_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(64))
    dbc_id: Mapped[int | None] = mapped_column(
        ForeignKey("dbc_files.id", ondelete="SET NULL"), doc="overrides the model's DBC"
    )
    secret_hash: Mapped[str | None] = mapped_column(
        String(200), default=None, doc="the device secret, hashed (Mosquitto's $7$ format)"
    )
    tags: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    location: Mapped[str] = mapped_column(String(200), default="", doc="a location label")
    disabled: Mapped[bool] = mapped_column(
        Boolean, default=False, doc="ingest refuses its data; not in the broker's password file"
    )
    created_ms: Mapped[int] = mapped_column(BigInteger, default=0)


class MachineField(Base):
    """A ``client_raw_data`` field seen from a machine (those have no DBC to list them)."""

    __tablename__ = "machine_fields"

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    chassis_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    msg_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    field: Mapped[str] = mapped_column(String(64), primary_key=True)


class Group(Base):
    """A line group of the Live Data page: one chart of a few fields of one message type."""

    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    msg_type: Mapped[str] = mapped_column(String(64))
    fields: Mapped[list[Any]] = mapped_column(JSON)
    unit: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(
        String(64), default=None, doc="shown for this model's machines only; None: for all"
    )
