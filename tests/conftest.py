"""Shared fixtures: a private Redis, two simulated upstreams and a gateway in front of them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import pytest
import redis

from services.app import create_app
from services.platform.redis_connection import EmbeddedRedis, start_private_redis
from tests.helpers import GatewayServer, SimProcess, openai_model, settings_for


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private redis-server (fakeredis over TCP when the binary is missing) for the whole run."""
    server = start_private_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The private Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def sims() -> Iterator[tuple[SimProcess, SimProcess]]:
    """Two simulated model servers (primary, secondary), shared by the run, reset per test."""
    primary, secondary = SimProcess("primary-sim"), SimProcess("secondary-sim")
    yield primary, secondary
    primary.stop()
    secondary.stop()


@pytest.fixture
def primary(sims: tuple[SimProcess, SimProcess]) -> SimProcess:
    sims[0].reset()
    return sims[0]


@pytest.fixture
def secondary(sims: tuple[SimProcess, SimProcess]) -> SimProcess:
    sims[1].reset()
    return sims[1]


@pytest.fixture
def gateway(
    redis_url: str, primary: SimProcess, secondary: SimProcess, tmp_path: Path
) -> Iterator[GatewayServer]:
    """A gateway whose `default` chain is primary -> secondary -> cache -> degraded (`bare`: the two
    models only), plus an Anthropic-speaking model."""
    models = {
        "primary": openai_model(primary.openai_url, "primary-upstream"),
        "secondary": openai_model(secondary.openai_url, "secondary-upstream"),
        "claude": {
            "deployments": [
                {"provider": "anthropic", "base_url": secondary.base, "model": "claude-sim"}
            ]
        },
    }
    chains = {
        "default": ["primary", "secondary", "cache", "degraded"],
        "bare": ["primary", "secondary"],
    }
    # Active probes are switched off so that no probe lands mid-test; tests/resilience/test_health_monitor.py
    # covers them.
    resilience = {"health": {"enabled": False}}
    settings = settings_for(redis_url, tmp_path / "logs", models, chains, resilience=resilience)
    with GatewayServer(create_app(settings, environ={})) as server:
        yield server


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    """Closes what a test opens (SDK clients), so no socket outlives its test."""
    with ExitStack() as stack:
        yield stack


POSTGRES_ADMIN = os.environ.get("FR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres(statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=3)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database: a SQLite file, or a new PostgreSQL database (dropped
    after the test; skipped with the reason when no PostgreSQL answers at FR_TEST_POSTGRES)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    name = f"fr_test_{uuid.uuid4().hex[:12]}"
    try:
        _postgres(f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"no PostgreSQL reachable at {POSTGRES_ADMIN}: {exc}")
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    _postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
