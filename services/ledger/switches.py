"""Operator switches: deployments an operator turned off (`POST /api/llm/providers/{name}/enable`),
recorded in the ledger database, shared with every process through Redis, and applied to the
`disabled` set the chain executor reads."""

from __future__ import annotations

import redis.asyncio as aioredis
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ledger import db as ledger_db
from services.ledger.wal import DB_ERRORS
from services.platform.redis_gate import REDIS_ERRORS, RedisGate


class OperatorSwitches:
    """Switch deployments on and off here, in Redis and in the database."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gate: RedisGate,
        engine: AsyncEngine | None,
        disabled: set[str],
        *,
        prefix: str,
    ) -> None:
        self._redis = redis
        self._gate = gate
        self._engine = engine
        self._disabled = disabled  # shared with the executor: changed in place
        self._key = prefix + "disabled"

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Switch a deployment on or off: database (the record), Redis (every process), here."""
        if self._engine is not None:
            await ledger_db.set_enabled(self._engine, name, enabled)
        (self._disabled.discard if enabled else self._disabled.add)(name)
        if self._gate.available:
            try:
                await (self._redis.srem(self._key, name) if enabled
                       else self._redis.sadd(self._key, name))  # fmt: skip
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
        logger.warning(
            "deployment {} {} by an operator", name, "enabled" if enabled else "disabled"
        )

    async def refresh(self) -> None:
        """Take the operators' switches from Redis (or, at start, from the database)."""
        fresh: set[str] | None = None
        if self._gate.available:
            try:
                if self._engine is not None and not await self._redis.exists(self._key):
                    names = await ledger_db.disabled_providers(self._engine)
                    if names:
                        await self._redis.sadd(self._key, *names)
                fresh = {str(n) for n in await self._redis.smembers(self._key)}
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
            except DB_ERRORS:
                pass
        if fresh is not None and fresh != self._disabled:
            self._disabled.clear()
            self._disabled.update(fresh)
