"""Alert rules, alerts and notifications.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_value", sa.String(64)),
        sa.Column("msg_type", sa.String(64)),
        sa.Column("field", sa.String(64)),
        sa.Column("condition", sa.String(8)),
        sa.Column("threshold", sa.Float),
        sa.Column("threshold_high", sa.Float),
        sa.Column("clear_threshold", sa.Float),
        sa.Column("clear_threshold_high", sa.Float),
        sa.Column("for_seconds", sa.Float, nullable=False),
        sa.Column("nodata_seconds", sa.Float),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("webhook_url", sa.String(2000)),
        sa.Column("webhook_secret", sa.String(200)),
        sa.Column("email_to", sa.JSON, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_alert_rules_org_id", "alert_rules", ["org_id"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "org_id", sa.String(64), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("rule_id", sa.Integer, sa.ForeignKey("alert_rules.id", ondelete="SET NULL")),
        sa.Column("rule_name", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("msg_type", sa.String(64)),
        sa.Column("field", sa.String(64)),
        sa.Column("chassis_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("active_key", sa.String(100), unique=True),
        sa.Column("raised_ms", sa.BigInteger, nullable=False),
        sa.Column("cleared_ms", sa.BigInteger),
        sa.Column("value", sa.Float),
        sa.Column("clear_value", sa.Float),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("acknowledged_by", sa.String(200)),
        sa.Column("acknowledged_ms", sa.BigInteger),
        sa.Column("comment", sa.Text),
    )
    op.create_index("ix_alerts_org_state", "alerts", ["org_id", "state"])
    op.create_index("ix_alerts_rule_id", "alerts", ["rule_id"])
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "alert_id",
            sa.Integer,
            sa.ForeignKey("alerts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("target", sa.String(2000), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
        sa.Column("locked_until_ms", sa.BigInteger),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("sent_ms", sa.BigInteger),
    )
    op.create_index("ix_notifications_alert_id", "notifications", ["alert_id"])
    op.create_index("ix_notifications_due", "notifications", ["status", "next_attempt_ms"])


def downgrade() -> None:
    for table in ("notifications", "alerts", "alert_rules"):
        op.drop_table(table)
