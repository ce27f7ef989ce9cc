"""Fixtures of the ledger tests: a migrated database engine (SQLite, or PostgreSQL when the
suite runs against it: see `database_url` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger.db import make_engine, migrate


@pytest.fixture
async def engine(database_url: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database with the ledger's schema, disposed of after the test."""
    eng = make_engine(database_url)
    await migrate(eng, tmp_path / "lock")
    yield eng
    await eng.dispose()
