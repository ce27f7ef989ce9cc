"""Fallback statistics: how requests were served, counted locally and summed in Redis.

Every request ends in exactly one tier: `primary` (the first model of its chain answered),
`fallback` (a later model did), `cache`, `degraded` or `failed`. Next to that: upstream attempts,
retries on the same deployment, requests the retry budget cut short, and answers per model.
Counting is a dict increment on the request path; `flush` adds the counts to one Redis hash
shared by all API processes (HINCRBY, one round trip), which the admin view reads.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from services.platform.redis_gate import REDIS_ERRORS, RedisGate

TIERS = ("primary", "fallback", "cache", "degraded", "failed")


class FallbackStatistics:
    """Counters for `/api/admin/fallback/statistics`."""

    def __init__(self, redis: aioredis.Redis, gate: RedisGate, *, prefix: str) -> None:
        self._redis = redis
        self._gate = gate
        self._key = f"{prefix}fallback:stats"
        self._pending: Counter[str] = Counter()
        # Since this process started; what /metrics (per process) will read.
        self.local: Counter[str] = Counter()

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to a counter."""
        self._pending[name] += n
        self.local[name] += n

    def served(self, tier: str, model: str | None, attempts: int, retries: int) -> None:
        """One request finished in `tier`."""
        pending = self._pending
        pending["requests"] += 1
        pending[f"tier:{tier}"] += 1
        pending["attempts"] += attempts
        if retries:
            pending["retries"] += retries
        if model is not None:
            pending[f"model:{model}"] += 1
        self.local[f"tier:{tier}"] += 1

    async def flush(self) -> bool:
        """Add the pending counts to the shared hash."""
        if not self._pending or not self._gate.available:
            return False
        batch, self._pending = self._pending, Counter()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, value in batch.items():
                    pipe.hincrby(self._key, name, value)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._gate.mark_down(exc)
            self._pending.update(batch)
            return False
        return True

    async def read(self) -> dict[str, Any]:
        """Totals over every process (plus this one's unflushed counts) in the admin shape."""
        totals: Counter[str] = Counter(self._pending)
        shared = self._gate.available
        if shared:
            try:
                raw = await self._redis.hgetall(self._key)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)
                shared = False
            else:
                totals.update({str(k): int(v) for k, v in raw.items()})
        requests = totals["requests"]
        tiers = {tier: totals[f"tier:{tier}"] for tier in TIERS}
        answered = requests - tiers["failed"]
        return {
            "scope": "all processes" if shared else "this process (Redis unreachable)",
            "total_requests": requests,
            "total_attempts": totals["attempts"],
            "total_retries": totals["retries"],
            "total_fallbacks": tiers["fallback"] + tiers["cache"] + tiers["degraded"],
            # Seed 000's names: requests whose first model did not answer, and those of them
            # that a later model answered (so `fallback_success_rate` is their ratio).
            "total_fallback_attempts": requests - tiers["primary"],
            "total_fallback_successes": tiers["fallback"],
            "budget_exhausted": totals["budget_exhausted"],
            "deadline_exceeded": totals["deadline_exceeded"],
            "tiers": tiers,
            "by_model": {
                k.removeprefix("model:"): v
                for k, v in sorted(totals.items())
                if k.startswith("model:")
            },
            "success_rate": round(answered / requests, 4) if requests else None,
            "fallback_success_rate": (
                round(tiers["fallback"] / (requests - tiers["primary"]), 4)
                if requests > tiers["primary"]
                else None
            ),
        }

    async def reset(self) -> None:
        """Zero the shared and local counters."""
        self._pending.clear()
        self.local.clear()
        if self._gate.available:
            try:
                await self._redis.delete(self._key)
            except REDIS_ERRORS as exc:
                self._gate.mark_down(exc)

    async def run(self, interval: float) -> None:
        """Flush on an interval while the process runs."""
        while True:
            await asyncio.sleep(interval)
            await self.flush()
