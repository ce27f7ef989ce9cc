"""Per-key rate limits in Redis: requests and tokens per minute (SPEC §10), shared by every API
process.

Fixed one-minute windows: `<prefix>rl:<key id>:<minute>:r` counts requests (incremented when a
request is admitted) and `…:t` counts tokens (added when answers come back, batched per process
on the sync interval, so the token limit may be overshot by what one interval serves). One Lua
call per request admits it and reads both counters. A refused request gets 429 with
`Retry-After`: the seconds left in the window. If Redis is unreachable the limiter fails open:
serving without limits beats refusing everyone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from services.config import RateLimitSettings
from services.platform.lua import LuaScript
from services.platform.redis_gate import REDIS_ERRORS, RedisGate
from services.routing.turn import TurnRecord

ADMIT_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""
WINDOW_SECONDS = 60


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        gate: RedisGate,
        settings: RateLimitSettings,
        *,
        prefix: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._gate = gate
        self._settings = settings
        self._prefix = f"{prefix}rl:"
        self._clock = clock
        self._admit = LuaScript(redis, ADMIT_LUA)
        self._spent: dict[tuple[str, int], int] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._settings.requests_per_minute or self._settings.tokens_per_minute)

    def _window(self) -> tuple[int, float]:
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        return window, (window + 1) * WINDOW_SECONDS - now

    def _base(self, key_id: str, window: int) -> str:
        """`<prefix>rl:{<key id>:<window>}`: the `:r` and `:t` counters the script reads
        together share the hash tag, so one Redis Cluster slot."""
        return f"{self._prefix}{{{key_id}:{window}}}"

    async def admit(self, key_id: str) -> int | None:
        """None to serve the request, else the Retry-After seconds of a 429."""
        if not self.enabled or not self._gate.available:
            return None
        window, left = self._window()
        base = self._base(key_id, window)
        try:
            requests, tokens = await self._admit(
                keys=[f"{base}:r", f"{base}:t"], args=[WINDOW_SECONDS * 2]
            )
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
            return None
        rpm, tpm = self._settings.requests_per_minute, self._settings.tokens_per_minute
        if (rpm and int(requests) > rpm) or (tpm and int(tokens) >= tpm):
            return max(1, math.ceil(left))
        return None

    def turn_started(self) -> None:
        """Admission happened before the turn (`admit`)."""

    def turn_finished(self, turn: TurnRecord) -> None:
        """The tokens a turn used count against its caller's budget; sent to Redis by `flush`."""
        tokens = turn.tokens_in + turn.tokens_out
        if self._settings.tokens_per_minute and tokens > 0:
            slot = (turn.caller, self._window()[0])
            self._spent[slot] = self._spent.get(slot, 0) + tokens

    async def flush(self) -> None:
        if not self._spent or not self._gate.available:
            return
        spent, self._spent = self._spent, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (key_id, window), tokens in spent.items():
                    key = f"{self._base(key_id, window)}:t"
                    pipe.incrby(key, tokens)
                    pipe.expire(key, WINDOW_SECONDS * 2)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
