"""Breakers shared through Redis: processes agree, half-open permits are atomic, Redis down is local."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.config import BreakerSettings
from services.platform.redis_connection import async_client, free_port
from services.platform.redis_gate import RedisGate
from services.resilience.breaker import CLOSED, OPEN, Admission, Outcome
from services.resilience.breaker_store import BreakerStore
from tests.helpers import FakeClock


@pytest.fixture
def redis_url(topology_redis_url: str) -> str:
    """Shared state: every test here runs on standalone, Sentinel and Cluster Redis."""
    return topology_redis_url


POLICY = BreakerSettings(open_seconds=5, open_jitter=0, half_open_probes=2)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = async_client(redis_url)
    yield redis
    await redis.aclose()


def store(redis: aioredis.Redis, clock: FakeClock) -> BreakerStore:
    """One API process's breakers (each process has its own gate and mirror)."""
    return BreakerStore(redis, RedisGate(redis), {"dep": POLICY}, prefix="t:", clock=clock)


async def test_a_breaker_opened_by_one_process_rejects_in_another(client: aioredis.Redis) -> None:
    """Process A trips the breaker; B rejects after its next sync, with no call of its own failing."""
    clock = FakeClock(1_700_000_000.0)
    a, b = store(client, clock), store(client, clock)
    for _ in range(5):
        assert await a.admit("dep") is Admission.ALLOW
        await a.record("dep", Outcome.FAILURE)
    assert a.state("dep").state == OPEN
    assert await b.sync()
    assert b.state("dep").state == OPEN
    assert await b.admit("dep") is Admission.REJECT
    assert not b.usable("dep")


async def test_half_open_permits_are_shared_between_processes(client: aioredis.Redis) -> None:
    """Two processes together get exactly half_open_probes permits, then rejections."""
    clock = FakeClock(1_700_000_000.0)
    a, b = store(client, clock), store(client, clock)
    for _ in range(5):
        await a.record("dep", Outcome.FAILURE)
    await b.sync()
    clock.now += 5
    decisions = [
        await a.admit("dep"),
        await b.admit("dep"),
        await a.admit("dep"),
        await b.admit("dep"),
    ]
    assert decisions.count(Admission.PROBE) == 2
    assert decisions.count(Admission.REJECT) == 2
    await a.record("dep", Outcome.SUCCESS, probe=True)
    await b.record("dep", Outcome.SUCCESS, probe=True)
    await a.sync()
    assert a.state("dep").state == b.state("dep").state == CLOSED


async def test_successes_are_batched_until_sync(client: aioredis.Redis, redis_url: str) -> None:
    """Closed-state successes cost no Redis call; the next sync sends their count."""
    clock = FakeClock(1_700_000_000.0)
    a = store(client, clock)
    for _ in range(100):
        await a.record("dep", Outcome.SUCCESS)
    assert await client.hget("t:breaker:dep", "successes") is None
    await a.sync()
    assert await client.hget("t:breaker:dep", "successes") == "100"


async def test_a_failure_carries_the_pending_successes(client: aioredis.Redis) -> None:
    """Pending successes reach Redis with the next failure, so the rate is not overstated."""
    clock = FakeClock(1_700_000_000.0)
    a = store(client, clock)
    for _ in range(10):
        await a.record("dep", Outcome.SUCCESS)
    for _ in range(4):
        await a.record("dep", Outcome.FAILURE)
    fields = await client.hgetall("t:breaker:dep")
    assert (fields["successes"], fields["failures"], fields["state"]) == ("10", "4", "closed")


async def test_reset_closes_everywhere(client: aioredis.Redis) -> None:
    """A manual reset in one process closes the breaker the other one sees."""
    clock = FakeClock(1_700_000_000.0)
    a, b = store(client, clock), store(client, clock)
    for _ in range(5):
        await a.record("dep", Outcome.FAILURE)
    await b.reset("dep")
    await a.sync()
    assert a.state("dep").state == CLOSED
    assert await a.admit("dep") is Admission.ALLOW


async def test_redis_down_falls_back_to_local_state() -> None:
    """With Redis unreachable the same transitions run in process, and the gate goes fail-open."""
    clock = FakeClock(1_700_000_000.0)
    dead = async_client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    gate = RedisGate(dead)
    board = BreakerStore(dead, gate, {"dep": POLICY}, prefix="t:", clock=clock)
    try:
        for _ in range(5):
            assert await board.admit("dep") is Admission.ALLOW
            await board.record("dep", Outcome.FAILURE)
        assert not gate.available
        assert board.state("dep").state == OPEN
        assert await board.admit("dep") is Admission.REJECT
        clock.now += 5
        assert await board.admit("dep") is Admission.PROBE
        assert not await board.sync()
    finally:
        await dead.aclose()


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "redis-down"])
async def test_timeouts_are_counted_and_uptime_runs_while_closed(
    client: aioredis.Redis, shared: bool
) -> None:
    """Seed 004's `total_timeouts` and `uptime_seconds`: a timeout is a failure that is also
    counted as a timeout (in Redis, seen by another process, and locally when Redis is down);
    uptime grows while closed, is 0 while open, and restarts when the breaker closes again."""
    clock = FakeClock(1_700_000_000.0)
    if shared:
        a, b = store(client, clock), store(client, clock)
    else:
        dead = async_client(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
        a = b = BreakerStore(dead, RedisGate(dead), {"dep": POLICY}, prefix="t:", clock=clock)
    clock.now += 100
    assert a.uptime("dep") == 100, "never changed: up since it was first watched"
    await a.record("dep", Outcome.TIMEOUT)
    await a.record("dep", Outcome.FAILURE)
    await b.sync()
    state = b.state("dep")
    assert (state.failures, state.timeouts) == (2, 1)
    for _ in range(3):
        await a.record("dep", Outcome.TIMEOUT)
    assert a.state("dep").state == OPEN and a.uptime("dep") == 0
    clock.now += 5
    for _ in range(2):
        assert await a.admit("dep") is Admission.PROBE
        await a.record("dep", Outcome.SUCCESS, probe=True)
    assert a.state("dep").state == CLOSED
    clock.now += 7
    assert a.uptime("dep") == 7, "up since it closed again"
    assert a.state("dep").timeouts == 4
    if not shared:
        await dead.aclose()
