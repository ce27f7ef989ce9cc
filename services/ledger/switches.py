"""Operator switches: deployments an operator turned off (`POST /api/llm/providers/{name}/enable`),
recorded in the ledger database, shared with every process through Redis, and applied to the
`disabled` set the chain executor reads."""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis
from loguru import logger

from services.platform.redis_gate import REDIS_ERRORS, RedisGate

# A member of the Redis set that names no deployment: the switches were restored from the record.
RESTORED = "*restored*"


class SwitchRecord(Protocol):
    """Where the switches outlive Redis (the ledger's database: services/ledger/runtime.py)."""

    async def record_switch(self, name: str, enabled: bool) -> None: ...

    async def disabled_deployments(self) -> set[str] | None: ...


class OperatorSwitches:
    """Switch deployments on and off here, in Redis and in the database."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gate: RedisGate,
        record: SwitchRecord | None,
        disabled: set[str],
        *,
        prefix: str,
    ) -> None:
        self._redis = redis
        self._gate = gate
        self._record = record
        self._disabled = disabled  # shared with the executor: changed in place
        self._key = prefix + "disabled"

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Switch a deployment on or off: database (the record), Redis (every process), here."""
        if self._record is not None:
            await self._record.record_switch(name, enabled)
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
        """Take the operators' switches from Redis; restore them from the record first when Redis
        has not got them (a new or restarted Redis: it keeps nothing on disk).

        The set holds a marker once restored, so that "nothing is switched off" (a set emptied
        by the last `srem`, which Redis deletes) is not mistaken for "Redis lost the switches",
        and the record is read once per Redis start, not on every refresh."""
        fresh: set[str] | None = None
        if self._gate.available:
            try:
                members = {str(n) for n in await self._redis.smembers(self._key)}
                if RESTORED not in members and self._record is not None:
                    names = await self._record.disabled_deployments()
                    if names is not None:  # None: the record cannot say yet; next refresh
                        await self._redis.sadd(self._key, RESTORED, *names)
                        members = {str(n) for n in await self._redis.smembers(self._key)}
                members.discard(RESTORED)
                fresh = members
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
        if fresh is not None and fresh != self._disabled:
            self._disabled.clear()
            self._disabled.update(fresh)
