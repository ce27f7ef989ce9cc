"""The usage ledger: provider registry, records, health snapshots, daily aggregates.

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
        "providers",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("local", sa.Boolean, nullable=False),
        sa.Column("breaker", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "llm_records",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(128)),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("original_model", sa.String(128)),
        sa.Column("deployment", sa.String(128)),
        sa.Column("provider", sa.String(32)),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.String(64)),
        sa.Column("tokens_in", sa.Integer, nullable=False),
        sa.Column("tokens_out", sa.Integer, nullable=False),
        sa.Column("cost_nanousd", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("fallback", sa.Boolean, nullable=False),
        sa.Column("local", sa.Boolean, nullable=False),
        sa.Column("estimated", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sqlite_with_rowid=False,
    )
    # Only what the report queries filter on: every index is paid for by every insert.
    op.create_table(
        "provider_health",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deployment", sa.String(128), nullable=False),
        sa.Column("breaker_state", sa.String(16), nullable=False),
        sa.Column("healthy", sa.Boolean, nullable=False),
        sa.Column("success_rate", sa.Float),
        sa.Column("p50_ms", sa.Float),
        sa.Column("p95_ms", sa.Float),
    )
    op.create_index("ix_provider_health_ts", "provider_health", ["ts"])
    op.create_table(
        "daily_costs",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("deployment", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("tokens_in", sa.BigInteger, nullable=False),
        sa.Column("tokens_out", sa.BigInteger, nullable=False),
        sa.Column("cost_nanousd", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("daily_costs", "provider_health", "llm_records", "providers"):
        op.drop_table(table)
