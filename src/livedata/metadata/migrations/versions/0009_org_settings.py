"""Organisation settings (time zone, real-time that follows the viewers) and the reason of
a command the server sent by itself.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orgs", sa.Column("timezone", sa.String(64), nullable=True))
    op.add_column(
        "orgs",
        sa.Column("follow_viewers", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "orgs", sa.Column("viewer_grace_s", sa.Integer, nullable=False, server_default="300")
    )
    op.add_column("commands", sa.Column("reason", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("reason")
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("viewer_grace_s")
        batch.drop_column("follow_viewers")
        batch.drop_column("timezone")
