"""Session pinning: a session id maps to a selector (model or chain) in Redis, with a TTL, and
belongs to the API key that created it.

The Redis value is `<owner> <selector>` (neither holds a space: owners are key ids, selectors
match MODEL_NAME_RE); a value without an owner (written before owners existed) belongs to
whoever uses it next. Another key's session answers as if it did not exist (the API's 404), and
cannot be re-pinned by it: the check and the write are one Lua script.

While Redis is unreachable the store fails open: pins made then are kept in this process (and
written to Redis when it answers again, before the gate reopens), and a session it has never seen
routes by the fallback selector (the configured default) instead of failing, unless the caller
says what it wants instead (an OpenAI client's requested model, pinned then without overwriting
a pin Redis may hold).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis
from loguru import logger

from services.platform.lua import LuaScript
from services.platform.redis_gate import REDIS_ERRORS, RedisGate

PIN_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  local space = string.find(current, ' ', 1, true)
  if space and string.sub(current, 1, space - 1) ~= ARGV[1] then return 0 end
  if ARGV[4] == '0' then return 2 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
return 1
"""
# Pins made during an outage, per process; beyond this the oldest are forgotten (they route by
# the fallback selector, which is what an unknown session does during an outage anyway).
MAX_LOCAL_PINS = 100_000


class Fallback:
    """The default of `SessionStore.selector(unknown=...)`: the store's fallback selector."""


FALLBACK = Fallback()


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
        # session id -> (owner, selector, expiry, replace a pin Redis may hold)
        self._local: dict[str, tuple[str, str, float, bool]] = {}
        self._pin = LuaScript(redis, PIN_LUA)
        gate.on_recover(self.write_back)

    def key(self, session_id: str) -> str:
        """The Redis key of a session (ids are validated before they get here)."""
        return self._prefix + session_id

    async def pin(
        self, session_id: str, selector: str, owner: str, *, replace: bool = True
    ) -> bool:
        """Create or re-pin a session for `owner`; False when it belongs to another owner.
        With `replace=False` an existing pin of the same owner is kept."""
        if self._gate.available:
            try:
                args = [owner, selector, self.ttl_seconds, int(replace)]
                done = await self._pin(keys=[self.key(session_id)], args=args)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
            else:
                return bool(done)
        local = self._local.get(session_id)
        if local is not None and local[0] != owner:
            return False
        if len(self._local) >= MAX_LOCAL_PINS:
            self._local.pop(next(iter(self._local)))
        self._local[session_id] = (owner, selector, self._clock() + self.ttl_seconds, replace)
        return True

    async def selector(
        self, session_id: str, owner: str, *, unknown: str | Fallback | None = FALLBACK
    ) -> str | None:
        """The session's selector, refreshing its TTL in the same round trip (GETEX).

        None means the session does not exist, or belongs to another owner. While Redis is
        unreachable the answer is this process's own pin, else `unknown` (by default the
        fallback selector): the request is served, not refused.
        """
        if self._gate.available:
            try:
                value = await self._redis.getex(self.key(session_id), ex=self.ttl_seconds)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
            else:
                return None if value is None else owned(str(value), owner)
        local = self._local.get(session_id)
        if local is not None and local[2] > self._clock():
            return local[1] if local[0] == owner else None
        return self.fallback_selector if isinstance(unknown, Fallback) else unknown

    async def write_back(self) -> None:
        """Store the pins made during an outage (run by the gate when Redis answers again); a
        pin made for a session this process had not seen never overwrites one Redis holds."""
        if not self._local:
            return
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id, (owner, selector, expires, replace) in self._local.items():
                if expires > now:
                    ttl = max(1, int(expires - now))
                    pipe.set(self.key(session_id), f"{owner} {selector}", ex=ttl, nx=not replace)
            await pipe.execute()
        logger.info("wrote {} session pins made during the Redis outage", len(self._local))
        self._local.clear()


def owned(value: str, owner: str) -> str | None:
    """The selector of a stored `<owner> <selector>` value if `owner` may use it, else None."""
    holder, space, selector = value.partition(" ")
    if not space:
        return value  # written before sessions had owners: anyone's
    return selector if holder == owner else None
