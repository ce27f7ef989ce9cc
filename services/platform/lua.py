"""Lua scripts run with EVALSHA, loaded up front rather than on the first NOSCRIPT.

redis-py's `register_script` sends EVALSHA and, on NOSCRIPT, SCRIPT LOAD on the same
connection. fakeredis's TCP server (the embedded default on a machine without `redis-server`)
closes the connection after any error reply, so that load never arrives and every call of every
script fails with "Connection closed by server": the planner's lock, the breakers' script and the
rate limiter all stopped working there. Loading each script once before its first EVALSHA (and
again after a NOSCRIPT from a real Redis that restarted) works on both.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


class LuaScript:
    """One script of one client: `await script(keys=[...], args=[...])`."""

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self._redis = redis
        self._script = redis.register_script(source)
        self._loaded = False

    async def __call__(self, *, keys: list[str], args: list[Any], client: Any = None) -> Any:
        """Run the script; with `client` (a pipeline), queue it there (a pipeline checks and
        loads its scripts itself with SCRIPT EXISTS before it executes)."""
        if client is not None:
            return await self._script(keys=keys, args=args, client=client)
        if not self._loaded:
            await self._redis.script_load(self._script.script)
            self._loaded = True
        try:
            return await self._redis.evalsha(self._script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a real Redis restarted and lost its script cache
            await self._redis.script_load(self._script.script)
            return await self._redis.evalsha(self._script.sha, len(keys), *keys, *args)
