"""Lua scripts on the embedded fakeredis (which drops a connection after any error reply, so
redis-py's NOSCRIPT-then-load never worked there) and on a real Redis that lost its scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.api.rate_limit import RateLimiter
from services.capacity.state import PlannerLock
from services.config import RateLimitSettings
from services.platform.lua import LuaScript
from services.platform.redis_connection import async_client, start_fakeredis_server
from services.platform.redis_gate import RedisGate

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
async def fake() -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of a fakeredis TCP server, as `main.py all` runs it without redis-server."""
    server = start_fakeredis_server()
    client = async_client(server.url)
    yield client
    await client.aclose()
    server.stop()


async def test_scripts_run_on_the_embedded_fakeredis(fake: aioredis.Redis) -> None:
    """Every call succeeds, the first included; so do the planner's lock and the rate limiter."""
    script = LuaScript(fake, INCR)
    assert [await script(keys=["n"], args=[2]) for _ in range(3)] == [2, 4, 6]
    lock = PlannerLock(fake, "fr:", ttl_seconds=10)
    assert await lock.hold() and await lock.hold(), "taken, then renewed by the script"
    await lock.release()
    limiter = RateLimiter(fake, RedisGate(fake), RateLimitSettings(requests_per_minute=1),
                          prefix="fr:")  # fmt: skip
    assert await limiter.admit("k") is None and await limiter.admit("k") is not None


async def test_a_redis_that_lost_its_scripts_gets_them_again(topology_redis_url: str) -> None:
    """SCRIPT FLUSH (what a restart does): the next call loads the script again and succeeds."""
    client = async_client(topology_redis_url)
    script = LuaScript(client, INCR)
    assert await script(keys=["lua-test"], args=[1]) == 1
    await client.script_flush()
    assert await script(keys=["lua-test"], args=[1]) == 2
    await client.delete("lua-test")
    await client.aclose()
