"""Session pinning: a session id maps to a selector (model or chain) in Redis, with a TTL."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.errors import GatewayError


class SessionStoreUnavailable(GatewayError):
    """Redis could not be reached for a session read or write."""

    status = 503
    type = "server_error"
    code = "session_store_unavailable"


class SessionStore:
    """Reads and writes session pins; one Redis round trip per operation."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}session:"
        self.ttl_seconds = ttl_seconds

    def key(self, session_id: str) -> str:
        """The Redis key of a session (ids are validated before they get here)."""
        return self._prefix + session_id

    async def pin(self, session_id: str, selector: str) -> None:
        """Create or re-pin a session."""
        try:
            await self._redis.set(self.key(session_id), selector, ex=self.ttl_seconds)
        except (RedisError, OSError) as exc:
            raise SessionStoreUnavailable("the session store is unavailable") from exc

    async def selector(self, session_id: str) -> str | None:
        """The session's selector, refreshing its TTL in the same round trip (GETEX)."""
        try:
            value = await self._redis.getex(self.key(session_id), ex=self.ttl_seconds)
        except (RedisError, OSError) as exc:
            raise SessionStoreUnavailable("the session store is unavailable") from exc
        return None if value is None else str(value)
