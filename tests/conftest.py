"""Shared fixtures: a private Redis, two simulated upstreams and a gateway in front of them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg
import pytest
import redis

from services.app import create_app
from services.platform.redis_connection import (
    EmbeddedRedis,
    redis_server_available,
    start_private_redis,
)
from services.platform.redis_topology import sync_redis
from tests.helpers import GatewayServer, SimProcess, openai_model, settings_for
from tests.redis_topology import ClusterSet, SentinelSet, start_cluster, start_sentinel_set


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private redis-server (fakeredis over TCP when the binary is missing) for the whole run."""
    server = start_private_redis()
    yield server
    server.stop()


def emptied(url: str) -> str:
    """`url` after FLUSHALL (on a cluster, of every primary)."""
    client = sync_redis(url, timeout=5)
    client.flushall()
    client.close()
    return url


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The private Redis, emptied before each test."""
    return emptied(redis_server.url)


@pytest.fixture(scope="session")
def sentinel_set() -> Iterator[SentinelSet]:
    """1 primary, 1 replica, 3 sentinels (started once, by the first test that asks)."""
    topology = start_sentinel_set()
    yield topology
    topology.stop()


@pytest.fixture(scope="session")
def cluster_set() -> Iterator[ClusterSet]:
    """A three-primary Redis Cluster (started once, by the first test that asks)."""
    topology = start_cluster()
    yield topology
    topology.stop()


@pytest.fixture(params=["standalone", "sentinel", "cluster"])
def topology_redis_url(request: pytest.FixtureRequest, redis_server: EmbeddedRedis) -> str:
    """An emptied Redis of each topology in turn: the shared-state tests' modules use it as
    their `redis_url`, so their promises are checked on standalone, Sentinel and Cluster."""
    if request.param == "standalone":
        return emptied(redis_server.url)
    if not redis_server_available():
        pytest.skip("Sentinel and Cluster need the redis-server binary")
    fixture = "sentinel_set" if request.param == "sentinel" else "cluster_set"
    topology: SentinelSet | ClusterSet = request.getfixturevalue(fixture)
    return emptied(topology.url)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = sync_redis(redis_url, timeout=5, decode_responses=True)
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


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database's URL, dropped afterwards (the test is skipped, with the
    reason, when no PostgreSQL answers at FR_TEST_POSTGRES)."""
    name = f"fr_test_{uuid.uuid4().hex[:12]}"
    try:
        _postgres(f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.skip(f"no PostgreSQL reachable at {POSTGRES_ADMIN}: {exc}")
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        _postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    with fresh_postgres() as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL ledger database."""
    with fresh_postgres() as url:
        yield url
