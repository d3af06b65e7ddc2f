"""Which DBC version decoded which time range of each machine (written by ingest and
by re-decoding).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decode_ranges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("chassis_id", sa.String(64), nullable=False),
        sa.Column(
            "dbc_id",
            sa.Integer,
            sa.ForeignKey("dbc_files.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("dbc_name", sa.String(200), nullable=False),
        sa.Column("from_ms", sa.BigInteger, nullable=False),
        sa.Column("to_ms", sa.BigInteger, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_decode_ranges_machine", "decode_ranges", ["org_id", "chassis_id"])


def downgrade() -> None:
    op.drop_table("decode_ranges")
