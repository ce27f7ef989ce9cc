"""The API key (its id, never the key) each usage record belongs to, for per-key reports.

No index: every index is paid for by every insert, and the per-key reports scan one time window
of the primary key (record ids begin with their timestamp) like the others.

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
    op.add_column("llm_records", sa.Column("api_key_id", sa.String(32)))


def downgrade() -> None:
    op.drop_column("llm_records", "api_key_id")
