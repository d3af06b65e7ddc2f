"""Usernames unique per organisation (they were unique across all of them).

A 409 "taken" for a name another organisation uses told one organisation about the
users of another.  Now (org_id, username) is unique.

SQLite cannot drop the old constraint: the table is rebuilt.  Dropping it would, with
foreign keys on, delete the rows that reference users (sessions, tokens and whatever
later migrations add) by their ON DELETE actions, so those rows are copied aside
first and put back after.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_NEW = "uq_users_org_username"


def _users(unique_username: bool) -> sa.Table:
    schema = sa.MetaData()
    sa.Table("orgs", schema, sa.Column("id", sa.String(64), primary_key=True))  # for the FK
    return sa.Table(
        "users_rebuilt",
        schema,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("username", sa.String(64), nullable=False, unique=unique_username),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        *([] if unique_username else [sa.UniqueConstraint("org_id", "username", name=_NEW)]),
    )


def _rebuild_sqlite(unique_username: bool) -> None:
    bind = op.get_bind()
    bind.exec_driver_sql("PRAGMA defer_foreign_keys = ON")  # checked at commit, when all is back
    children = [
        str(name)
        for (name,) in bind.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'users'"
        )
        if any(
            row[2] == "users" for row in bind.exec_driver_sql(f'PRAGMA foreign_key_list("{name}")')
        )
    ]
    for child in children:
        bind.exec_driver_sql(f'CREATE TEMP TABLE "keep_{child}" AS SELECT * FROM "{child}"')
    table = _users(unique_username)
    table.create(bind)
    columns = ", ".join(c.name for c in table.columns)
    bind.exec_driver_sql(f"INSERT INTO users_rebuilt ({columns}) SELECT {columns} FROM users")
    bind.exec_driver_sql("DROP TABLE users")
    bind.exec_driver_sql("ALTER TABLE users_rebuilt RENAME TO users")
    bind.exec_driver_sql("CREATE INDEX ix_users_org ON users (org_id)")
    for child in children:
        bind.exec_driver_sql(f'DELETE FROM "{child}"')
        bind.exec_driver_sql(f'INSERT INTO "{child}" SELECT * FROM "keep_{child}"')
        bind.exec_driver_sql(f'DROP TABLE "keep_{child}"')


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(unique_username=False)
        return
    op.drop_constraint("users_username_key", "users", type_="unique")
    op.create_unique_constraint(_NEW, "users", ["org_id", "username"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(unique_username=True)
        return
    op.drop_constraint(_NEW, "users", type_="unique")
    op.create_unique_constraint("users_username_key", "users", ["username"])
