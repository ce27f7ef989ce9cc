"""Fail-open for Redis: after one failed call, stop calling Redis until a ping says it is back.

Without this gate every request during an outage would wait out a socket timeout before falling
back. With it, the first failure flips `available` off, the hot path skips Redis (sessions fall
back to local pins and the default selector, breakers to their local state, the cache misses), and
`watch` pings on an interval and flips it back on, calling each recovery hook (write back the pins
made during the outage, resynchronise breakers) before traffic uses Redis again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisClusterException, RedisError

# What a Redis call raises when the server is unreachable, slow or gone. redis-py's Cluster
# client raises RedisClusterException, which is not a RedisError, when no node answers ("Redis
# Cluster cannot be connected") or slots are uncovered: every turn answered 500 while a whole
# Cluster was down (tests/scaleout/test_cluster_node_loss.py). The same class also reports
# client misuse (a multi-key command across slots); that fails open too, and the gate's warning
# names its class, as it does for every error that turns Redis off.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, asyncio.TimeoutError)


class RedisGate:
    """Whether this process currently uses Redis, and the loop that finds out when to resume."""

    def __init__(self, redis: aioredis.Redis, *, retry_interval: float = 0.5) -> None:
        self._redis = redis
        self._retry_interval = retry_interval
        self.available = True
        self._on_recover: list[Callable[[], Awaitable[object]]] = []
        self.outages = 0

    def on_recover(self, hook: Callable[[], Awaitable[object]]) -> None:
        """Run `hook` after Redis answers again, before the gate reopens."""
        self._on_recover.append(hook)

    def mark_down(self, exc: BaseException) -> None:
        """Record a failed call: the process goes fail-open until `watch` sees Redis again."""
        if self.available:
            self.available = False
            self.outages += 1
            logger.warning("Redis unreachable ({}): serving fail-open", type(exc).__name__)

    async def check(self) -> bool:
        """Ping once; on success after an outage run the recovery hooks and reopen."""
        try:
            await self._redis.ping()
        except REDIS_ERRORS as exc:
            self.mark_down(exc)
            return False
        if not self.available:
            for hook in self._on_recover:
                try:
                    await hook()
                except REDIS_ERRORS as exc:
                    logger.warning("Redis recovery step failed ({}); retrying", type(exc).__name__)
                    return False
            self.available = True
            logger.info("Redis is back: shared state resumed")
        return True

    async def watch(self) -> None:
        """Check on an interval while the process runs (only pings while fail-open)."""
        while True:
            await asyncio.sleep(self._retry_interval)
            if not self.available:
                try:
                    await self.check()
                except Exception as exc:  # noqa: BLE001 - this loop is the only way back
                    # An error no Redis client should raise (a client bug) must not end the
                    # loop: this process would stay fail-open until restarted.
                    logger.error(
                        "Redis check failed unexpectedly ({}); retrying", exc.__class__.__name__
                    )
