"""Organisations, machines, DBC files, machine models, seen fields, groups.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
    )
    op.create_table(
        "dbc_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_dbc_files_org_id", "dbc_files", ["org_id"])
    op.create_table(
        "machine_models",
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("dbc_id", sa.Integer, sa.ForeignKey("dbc_files.id", ondelete="SET NULL")),
    )
    op.create_table(
        "machines",
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("chassis_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("dbc_id", sa.Integer, sa.ForeignKey("dbc_files.id", ondelete="SET NULL")),
    )
    op.create_table(
        "machine_fields",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("chassis_id", sa.String(64), primary_key=True),
        sa.Column("msg_type", sa.String(64), primary_key=True),
        sa.Column("field", sa.String(64), primary_key=True),
    )
    op.create_table(
        "groups",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("msg_type", sa.String(64), nullable=False),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_index("ix_groups_org_id", "groups", ["org_id"])


def downgrade() -> None:
    for table in ("groups", "machine_fields", "machines", "machine_models", "dbc_files", "orgs"):
        op.drop_table(table)
