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
from services.routing.pin_cache import PinCache

# Returns 0 (another owner's), 2 (kept: replace=0), 1 (created) or 3 (re-pinned, and the id
# published on ARGV[5] so that every process drops its cached pin: services/routing/pin_cache.py).
# `pcall`: a Redis user without channel permissions (Redis 7's ACL default) still pins; its
# processes cannot subscribe either, so none of them caches a pin that could go stale.
PIN_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  local space = string.find(current, ' ', 1, true)
  if space and string.sub(current, 1, space - 1) ~= ARGV[1] then return 0 end
  if ARGV[4] == '0' then return 2 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
if current then
  redis.pcall('PUBLISH', ARGV[5], ARGV[6])
  return 3
end
return 1
"""
REPINNED = 3
# Session ids per invalidation message when the pins of an outage are written back.
ANNOUNCE_BATCH = 500
# How long a re-pin waits for its own invalidation to come back through the feed (by then Redis
# has sent it to every replica); normally well under a millisecond.
DELIVERY_WAIT_SECONDS = 0.25
# Pins made during an outage, per process; beyond this the oldest are forgotten (they route by
# the fallback selector, which is what an unknown session does during an outage anyway).
MAX_LOCAL_PINS = 100_000


class Fallback:
    """The default of `SessionStore.selector(unknown=...)`: the store's fallback selector."""


FALLBACK = Fallback()


class SessionStore:
    """Reads and writes session pins: at most one Redis round trip per operation, none for a
    turn whose pin this process read recently (`cache`)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gate: RedisGate,
        *,
        prefix: str,
        ttl_seconds: int,
        fallback_selector: str,
        cache: PinCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._gate = gate
        self._prefix = f"{prefix}session:"
        # The channel every re-pin is published on (services/routing/pin_cache.py).
        self.invalidation_channel = f"{prefix}session-pins"
        self.ttl_seconds = ttl_seconds
        self.fallback_selector = fallback_selector
        self.cache = cache if cache is not None else PinCache(0)
        self._clock = clock
        # session id -> (owner, selector, expiry, replace a pin Redis may hold)
        self._local: dict[str, tuple[str, str, float, bool]] = {}
        self._pin = LuaScript(redis, PIN_LUA)
        gate.on_recover(self.write_back)
        gate.on_recover(self._forget_cached)

    def key(self, session_id: str) -> str:
        """The Redis key of a session (ids are validated before they get here)."""
        return self._prefix + session_id

    async def pin(
        self, session_id: str, selector: str, owner: str, *, replace: bool = True
    ) -> bool:
        """Create or re-pin a session for `owner`; False when it belongs to another owner.
        With `replace=False` an existing pin of the same owner is kept."""
        if self._gate.available:
            args = [owner, selector, self.ttl_seconds, int(replace),
                    self.invalidation_channel, session_id]  # fmt: skip
            waiter = self.cache.expect(session_id)
            try:
                done = await self._pin(keys=[self.key(session_id)], args=args)
                if done != REPINNED:
                    return bool(done)
                self.cache.forget(session_id)
                # Answer once every replica has been sent the invalidation (a client that sends
                # its next turn to another replica must find the new pin there).
                await self.cache.delivered(session_id, waiter, DELIVERY_WAIT_SECONDS)
                return True
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
            finally:
                self.cache.unexpect(session_id, waiter)
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
        """The session's selector, refreshing its TTL in the same round trip (GETEX), or from the
        pin cache when this process read it within `cache_seconds` (no round trip).

        None means the session does not exist, or belongs to another owner. While Redis is
        unreachable the answer is this process's own pin, else `unknown` (by default the
        fallback selector): the request is served, not refused.
        """
        if self._gate.available:
            cache = self.cache
            cached = cache.get(session_id)
            if cached is not None:
                return owned(cached, owner)
            generation = cache.generation
            try:
                value = await self._redis.getex(self.key(session_id), ex=self.ttl_seconds)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
            else:
                if value is None:
                    return None
                cache.put(session_id, str(value), generation)
                return owned(str(value), owner)
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
        replaced: list[str] = []  # may overwrite pins other processes have cached
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id, (owner, selector, expires, replace) in self._local.items():
                if expires > now:
                    ttl = max(1, int(expires - now))
                    pipe.set(self.key(session_id), f"{owner} {selector}", ex=ttl, nx=not replace)
                    if replace:
                        replaced.append(session_id)
            await pipe.execute()
        # Announced after the writes, outside the pipeline (a Cluster pipeline refuses PUBLISH),
        # many ids per message (session ids hold no spaces).
        for start in range(0, len(replaced), ANNOUNCE_BATCH):
            batch = " ".join(replaced[start : start + ANNOUNCE_BATCH])
            await self._redis.publish(self.invalidation_channel, batch)
        logger.info("wrote {} session pins made during the Redis outage", len(self._local))
        self._local.clear()

    async def _forget_cached(self) -> None:
        """After an outage: nothing cached before it is trusted (re-pins may have been missed)."""
        self.cache.clear()


def owned(value: str, owner: str) -> str | None:
    """The selector of a stored `<owner> <selector>` value if `owner` may use it, else None."""
    holder, space, selector = value.partition(" ")
    if not space:
        return value  # written before sessions had owners: anyone's
    return selector if holder == owner else None
