"""Spending budgets per API key and period, enforced in Redis by every API process together.

Before its walk, a turn *reserves* the most it could cost: its prompt's characters as tokens (a
token is at least one character, so this is an upper bound) at the chain's dearest input price,
plus its `max_tokens` (or `api.budgets.default_max_tokens`) at the dearest output price. One Lua
script admits the reservation only if spent + reserved + it stays within the key's limit (and
something is left: a used-up budget refuses even a free request); when the
turn ends, its observer settles: the reservation is released and the real cost (the ledger's)
added to `spent`. Concurrent turns therefore cannot together pass the limit; a single turn can
only overspend by what its real cost exceeds its reservation (an upstream that ignores
`max_tokens`). Over the limit: 429 `budget_exceeded`, `Retry-After` the seconds to the period's
reset (UTC day or month).

Keys: `<prefix>{budget}:<key id>:<period>` (a hash: spent, reserved) and `<prefix>{budget}:limits`
(the admin's limits); the `{budget}` hash tag keeps them in one Redis Cluster slot, as the scripts
read both. Deployments from before that tag had `<prefix>budget:...` and `<prefix>budget-limits`;
`adopt_legacy_keys` renames them once at start, so an upgrade keeps the period's spend and limits.

With Redis unreachable, budgets fail open like the other shared state (logged once): the gateway
keeps answering, and what is spent meanwhile is recorded in the ledger but not counted here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ResponseError

from services.alerts.events import Alert
from services.alerts.sender import AlertSender
from services.config import Pricing, Settings
from services.errors import BudgetExceeded
from services.ledger.costs import NANO_PER_USD, cost_nanousd, usd
from services.platform.lua import LuaScript
from services.platform.redis_gate import REDIS_ERRORS, RedisGate
from services.routing.turn import TurnRecord, prompt_chars

Json = dict[str, Any]
NO_LIMIT = -1

RESERVE_LUA = """
local limit = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or ARGV[2])
if limit < 0 then return {1, 0, 0, -1} end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local estimate = tonumber(ARGV[3])
if spent >= limit or spent + reserved + estimate > limit then return {0, spent, reserved, limit} end
redis.call('HINCRBY', KEYS[1], 'reserved', estimate)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, spent, reserved + estimate, limit}
"""
# Returns the spend before and after, and the key's limit: the one settlement that crosses the
# alert threshold is the only one to see it crossed (the script runs atomically).
SETTLE_LUA = """
local reserved = redis.call('HINCRBY', KEYS[1], 'reserved', 0 - tonumber(ARGV[1]))
if reserved < 0 then redis.call('HSET', KEYS[1], 'reserved', 0) end
local after = redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local limit = tonumber(redis.call('HGET', KEYS[2], ARGV[4]) or ARGV[5])
return {after - tonumber(ARGV[2]), after, limit}
"""


def period_bounds(period: str, now: datetime) -> tuple[str, datetime]:
    """The period's id (`2026-11` or `2026-11-23`) and when the next one starts (UTC)."""
    if period == "day":
        start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        return start.strftime("%Y-%m-%d"), start + timedelta(days=1)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return now.strftime("%Y-%m"), datetime(year, month, 1, tzinfo=UTC)


class Budgets:
    """Reserves before a turn, settles after it (as a turn observer)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        gate: RedisGate,
        settings: Settings,
        *,
        prefix: str,
        clock: Callable[[], float] = time.time,
        alerts: AlertSender | None = None,
    ) -> None:
        self._settings = settings.api.budgets
        self._alerts = alerts
        self._alert_ratio = settings.alerts.budget_percent / 100
        self._redis = redis
        self._gate = gate
        self._legacy_prefix = f"{prefix}budget:"
        self._legacy_limits_key = f"{prefix}budget-limits"
        self._prefix = f"{prefix}{{budget}}:"
        self._limits_key = f"{prefix}{{budget}}:limits"
        self._clock = clock
        self._reserve = LuaScript(redis, RESERVE_LUA)
        self._settle = LuaScript(redis, SETTLE_LUA)
        self._dearest = dearest_prices(settings)
        # request id -> (usage hash key, reserved nano-dollars), until the turn ends
        self._held: dict[str, tuple[str, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def limit_nanousd(self, key_id: str) -> int:
        """The configured limit of `key_id` (the admin API's override lives in Redis)."""
        usd_limit = self._settings.keys.get(key_id, self._settings.default_usd)
        return NO_LIMIT if usd_limit is None else round(usd_limit * NANO_PER_USD)

    def estimate_nanousd(self, selector: str, request: Json) -> int:
        """The most this turn could cost (see the module docstring)."""
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        tokens_out = limit if isinstance(limit, int) and limit > 0 else None
        pricing = self._dearest.get(selector, Pricing())
        return cost_nanousd(pricing, prompt_chars(request),
                            tokens_out or self._settings.default_max_tokens)  # fmt: skip

    def _usage_key(self, key_id: str) -> tuple[str, int, int]:
        """(the usage hash of this period, seconds to the reset, TTL for the hash)."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        period, reset = period_bounds(self._settings.period, now)
        left = max(1, math.ceil((reset - now).total_seconds()))
        return f"{self._prefix}{key_id}:{period}", left, left + 86_400

    async def reserve(self, request_id: str, key_id: str, selector: str, request: Json) -> None:
        """Hold the turn's worst case against the key's budget; BudgetExceeded if it does not
        fit. Fails open while Redis is unreachable."""
        if not self._settings.enabled or not self._gate.available:
            return
        usage, left, ttl = self._usage_key(key_id)
        estimate = self.estimate_nanousd(selector, request)
        args = [key_id, self.limit_nanousd(key_id), estimate, ttl]
        try:
            admitted, spent, _reserved, limit = await self._reserve(
                keys=[usage, self._limits_key], args=args
            )
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
            return
        if not int(admitted):
            reset = datetime.fromtimestamp(self._clock() + left, UTC).strftime("%Y-%m-%d %H:%M")
            raise BudgetExceeded(
                f"this API key's budget of ${usd(int(limit))} for the {self._settings.period} is "
                f"used up (${usd(int(spent))} spent, this request could cost up to "
                f"${usd(estimate)}); it resets at {reset} UTC",
                left,
            )
        if int(limit) != NO_LIMIT:
            self._held[request_id] = (usage, estimate)

    def turn_started(self) -> None:
        """Reserved before the turn started (`reserve`)."""

    def turn_finished(self, turn: TurnRecord) -> None:
        """Release the turn's reservation and count its real cost (in the background)."""
        held = self._held.pop(turn.request_id, None)
        if held is None:
            return
        task = asyncio.create_task(
            self._settle_now(turn.caller, held[0], held[1], turn.cost_nanousd)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_now(self, key_id: str, usage: str, reserved: int, cost: int) -> None:
        args = [reserved, cost, 40 * 86_400, key_id, self.limit_nanousd(key_id)]
        try:
            before, after, limit = await self._settle(keys=[usage, self._limits_key], args=args)
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
            logger.warning("budget settlement lost with Redis ({}): {} nano-USD", exc, cost)
            return
        threshold = int(limit) * self._alert_ratio
        if self._alerts is not None and int(limit) > 0 and int(before) < threshold <= int(after):
            period = usage.rsplit(":", 1)[1]
            self._alerts.emit(Alert(
                "budget.threshold", key_id,
                f"API key {key_id} has spent ${usd(int(after))} of its ${usd(int(limit))} budget "
                f"for {period} ({100 * int(after) / int(limit):.0f} %)",
                {"key_id": key_id, "period": period, "spent_usd": usd(int(after)),
                 "budget_usd": usd(int(limit))},
                dedupe=f"budget:{key_id}:{period}", dedupe_seconds=40 * 86_400,
            ))  # fmt: skip

    async def adopt_legacy_keys(self) -> int:
        """Rename the keys of a deployment from before the `{budget}` tag (a standalone or
        Sentinel Redis: a Cluster was never supported with them); answer how many. Several
        processes may do this at once: a key another one renamed first is skipped. A marker
        key ends the search for good (it scans the whole keyspace)."""
        adopted = 0
        marker = self._prefix + "adopted"
        try:
            if await self._redis.exists(marker):
                return 0
            limits: dict[Any, Any] = await self._redis.hgetall(self._legacy_limits_key)
            for key_id, value in limits.items():
                adopted += await self._redis.hsetnx(self._limits_key, key_id, value)
            if limits:
                await self._redis.delete(self._legacy_limits_key)
            async for name in self._redis.scan_iter(match=f"{self._legacy_prefix}*", count=500):
                new = self._prefix + str(name).removeprefix(self._legacy_prefix)
                try:
                    adopted += bool(await self._redis.renamenx(name, new))
                except ResponseError:  # renamed by another process meanwhile
                    continue
            await self._redis.set(marker, "1")
        except REDIS_ERRORS as exc:
            logger.warning("could not adopt the old budget keys ({}); retried at the next start",
                           type(exc).__name__)  # fmt: skip
        if adopted:
            logger.info("renamed {} budget keys to the cluster-safe {{budget}} layout", adopted)
        return adopted

    async def set_limit(self, key_id: str, budget_usd: float | None) -> None:
        """The admin's limit for `key_id`, for every process (None: back to the configuration)."""
        if budget_usd is None:
            await self._redis.hdel(self._limits_key, key_id)
        else:
            await self._redis.hset(self._limits_key, key_id, round(budget_usd * NANO_PER_USD))

    async def view(self, key_ids: list[str]) -> dict[str, Any]:
        """Each key's limit, spend and reservations this period: the keys configured, given a
        limit by the admin, spending this period, or named."""
        raw: dict[Any, Any] = await self._redis.hgetall(self._limits_key)
        overrides = {str(k): int(v) for k, v in raw.items()}  # the client decodes responses
        period, _ = period_bounds(self._settings.period, datetime.fromtimestamp(self._clock(), UTC))
        spending = [
            str(name).removeprefix(self._prefix).removesuffix(f":{period}")
            async for name in self._redis.scan_iter(match=f"{self._prefix}*:{period}", count=500)
        ]
        names = sorted({*self._settings.keys, *overrides, *spending, *key_ids})
        out: dict[str, Any] = {}
        for key_id in names:
            usage, left, _ = self._usage_key(key_id)
            current = await self._redis.hgetall(usage)
            limit = overrides.get(key_id, self.limit_nanousd(key_id))
            out[key_id] = {
                "budget_usd": None if limit == NO_LIMIT else usd(limit),
                "source": "admin" if key_id in overrides else "config",
                "spent_usd": usd(int(current.get("spent", 0))),
                "reserved_usd": usd(int(current.get("reserved", 0))),
                "resets_in_seconds": left,
            }
        return {"enabled": self._settings.enabled, "period": self._settings.period, "keys": out}


def dearest_prices(settings: Settings) -> dict[str, Pricing]:
    """Per selector, the highest input and output prices of the models it may use."""
    chains = {name: [name] for name in settings.models}
    chains.update({name: list(steps) for name, steps in settings.chain_steps().items()})
    out: dict[str, Pricing] = {}
    for selector, steps in chains.items():
        models = {s for s in steps if s in settings.models}
        for model in list(models):  # where a 400 may send it (services/routing/rejections.py)
            own = settings.models[model]
            models.update(own.context_window_fallback, own.content_policy_fallback)
        prices = [settings.models[m].pricing for m in models if m in settings.models]
        out[selector] = Pricing(
            input_per_mtok=max((p.input_per_mtok for p in prices), default=0.0),
            output_per_mtok=max((p.output_per_mtok for p in prices), default=0.0),
        )
    return out
