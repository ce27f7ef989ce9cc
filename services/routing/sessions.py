"""Session pinning: a session id maps to a selector (model or chain) in Redis, with a TTL.

While Redis is unreachable the store fails open: pins made then are kept in this process (and
written to Redis when it answers again, before the gate reopens), and a session it has never seen
routes by the fallback selector (the configured default) instead of failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis
from loguru import logger

from services.platform.redis_gate import REDIS_ERRORS, RedisGate

# Pins made during an outage, per process; beyond this the oldest are forgotten (they route by
# the fallback selector, which is what an unknown session does during an outage anyway).
MAX_LOCAL_PINS = 100_000


class SessionStore:
    """Reads and writes session pins; one Redis round trip per operation."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gate: RedisGate,
        *,
        prefix: str,
        ttl_seconds: int,
        fallback_selector: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._gate = gate
        self._prefix = f"{prefix}session:"
        self.ttl_seconds = ttl_seconds
        self.fallback_selector = fallback_selector
        self._clock = clock
        self._local: dict[str, tuple[str, float]] = {}
        gate.on_recover(self.write_back)

    def key(self, session_id: str) -> str:
        """The Redis key of a session (ids are validated before they get here)."""
        return self._prefix + session_id

    async def pin(self, session_id: str, selector: str) -> None:
        """Create or re-pin a session."""
        if self._gate.available:
            try:
                await self._redis.set(self.key(session_id), selector, ex=self.ttl_seconds)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
            else:
                return
        if len(self._local) >= MAX_LOCAL_PINS:
            self._local.pop(next(iter(self._local)))
        self._local[session_id] = (selector, self._clock() + self.ttl_seconds)

    async def selector(self, session_id: str) -> str | None:
        """The session's selector, refreshing its TTL in the same round trip (GETEX).

        None means the session does not exist. While Redis is unreachable the answer is this
        process's own pin, else the fallback selector: the request is served, not refused.
        """
        if self._gate.available:
            try:
                value = await self._redis.getex(self.key(session_id), ex=self.ttl_seconds)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
            else:
                return None if value is None else str(value)
        local = self._local.get(session_id)
        if local is not None and local[1] > self._clock():
            return local[0]
        return self.fallback_selector

    async def write_back(self) -> None:
        """Store the pins made during an outage (run by the gate when Redis answers again)."""
        if not self._local:
            return
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id, (selector, expires) in self._local.items():
                if expires > now:
                    pipe.set(self.key(session_id), selector, ex=max(1, int(expires - now)))
            await pipe.execute()
        logger.info("wrote {} session pins made during the Redis outage", len(self._local))
        self._local.clear()
