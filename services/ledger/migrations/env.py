"""Alembic environment: migrations run on the connection the ledger hands over (see
services/ledger/db.py `migrate`), never from a URL in an ini file."""

from __future__ import annotations

from alembic import context

from services.ledger.db import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
