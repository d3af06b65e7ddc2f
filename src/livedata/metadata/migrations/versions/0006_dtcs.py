"""DTC lifecycle: each diagnostic trouble code of a machine, when it became active and cleared;
J1939 options of a DBC file.

Revision ID: 0006
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dtcs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("chassis_id", sa.String(64), nullable=False),
        sa.Column("sa", sa.Integer, nullable=False),
        sa.Column("spn", sa.Integer, nullable=False),
        sa.Column("fmi", sa.Integer, nullable=False),
        sa.Column("oc", sa.Integer, nullable=False),
        sa.Column("lamps", sa.JSON),
        sa.Column("since_ms", sa.BigInteger, nullable=False),
        sa.Column("cleared_ms", sa.BigInteger),
    )
    op.create_index("ix_dtcs_machine", "dtcs", ["org_id", "chassis_id", "cleared_ms"])
    op.add_column("dbc_files", sa.Column("j1939", sa.Boolean, nullable=True))
    op.add_column(
        "dbc_files",
        sa.Column("separate_sources", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("dbc_files") as batch:
        batch.drop_column("separate_sources")
        batch.drop_column("j1939")
    op.drop_table("dtcs")
