"""Machine registry: tags, a location label, a disabled flag and a creation time per machine;
line groups that belong to one model (or, without one, to every machine).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("machines", sa.Column("tags", sa.JSON, nullable=True))
    op.add_column(
        "machines", sa.Column("location", sa.String(200), nullable=False, server_default="")
    )
    op.add_column(
        "machines", sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column(
        "machines", sa.Column("created_ms", sa.BigInteger, nullable=False, server_default="0")
    )
    op.add_column("groups", sa.Column("model", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("model")
    with op.batch_alter_table("machines") as batch:
        for column in ("created_ms", "disabled", "location", "tags"):
            batch.drop_column(column)
