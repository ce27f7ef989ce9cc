"""The API process's runtime, opened and closed together: Redis and HTTP clients, adapters,
router, chain executor with its breakers, health monitor, budget, cache and statistics, the
session store, and the background loops that keep them in step with Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import redis.asyncio as aioredis
from loguru import logger

from services.breaker_store import BreakerStore
from services.config import Settings
from services.executor import ChainExecutor
from services.fallback_stats import FallbackStatistics
from services.health_monitor import HealthMonitor
from services.providers.anthropic import AnthropicProvider
from services.providers.base import Provider
from services.providers.openai import OpenAIProvider
from services.redis_connection import async_client
from services.redis_gate import RedisGate
from services.response_cache import ResponseCache
from services.retry_budget import RetryBudget
from services.router import Router
from services.sessions import SessionStore


def build_providers(
    settings: Settings, session: aiohttp.ClientSession, environ: Mapping[str, str]
) -> dict[str, list[Provider]]:
    """One adapter per deployment; keys are read from the env vars the config names."""
    up = settings.upstream
    providers: dict[str, list[Provider]] = {}
    for model, name, deployment in settings.deployments():
        total = deployment.timeout_seconds or up.request_timeout_seconds
        kwargs = {
            "base_url": deployment.base_url,
            "upstream_model": deployment.model,
            "api_key": environ.get(deployment.api_key_env) if deployment.api_key_env else None,
            "session": session,
            "timeout": aiohttp.ClientTimeout(total=total, sock_connect=up.connect_timeout_seconds),
            # A stream may run long; what must not happen is a long silence between chunks.
            "stream_timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=up.connect_timeout_seconds, sock_read=total
            ),
        }
        adapter: Provider = (
            AnthropicProvider(name, **kwargs)  # type: ignore[arg-type]
            if deployment.provider == "anthropic"
            else OpenAIProvider(name, **kwargs)  # type: ignore[arg-type]
        )
        providers.setdefault(model, []).append(adapter)
    return providers


@dataclass
class Gateway:
    """Everything a request handler needs; `start` and `close` bracket the app's lifespan."""

    settings: Settings
    environ: Mapping[str, str]
    redis: aioredis.Redis | None = None
    http: aiohttp.ClientSession | None = None
    gate: RedisGate | None = None
    router: Router | None = None
    executor: ChainExecutor | None = None
    breakers: BreakerStore | None = None
    health: HealthMonitor | None = None
    cache: ResponseCache | None = None
    stats: FallbackStatistics | None = None
    sessions: SessionStore | None = None
    draining: bool = False
    _owns_redis: bool = field(default=False, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    async def start(self) -> None:
        """Open the Redis client and the upstream pool, build the pipeline, start its loops."""
        settings, resilience = self.settings, self.settings.resilience
        if self.redis is None:
            self.redis = async_client(
                settings.redis.url, timeout=settings.redis.socket_timeout_seconds
            )
            self._owns_redis = True
        connector = aiohttp.TCPConnector(
            limit=settings.upstream.max_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self.http = aiohttp.ClientSession(
            connector=connector, skip_auto_headers=("User-Agent",), auto_decompress=True
        )
        prefix = settings.redis.key_prefix
        self.gate = RedisGate(self.redis)
        providers = build_providers(settings, self.http, self.environ)
        by_name = {p.name: p for group in providers.values() for p in group}
        deployments = {name: d for _, name, d in settings.deployments()}
        self.router = Router(settings, providers)
        self.breakers = BreakerStore(
            self.redis,
            self.gate,
            {name: settings.breaker_policy(d) for name, d in deployments.items()},
            prefix=prefix,
        )
        self.gate.on_recover(self.breakers.sync)
        self.health = HealthMonitor(
            resilience.health, by_name, probed={n for n, d in deployments.items() if d.probe}
        )
        self.cache = ResponseCache(self.redis, self.gate, resilience.cache, prefix=prefix)
        self.stats = FallbackStatistics(self.redis, self.gate, prefix=prefix)
        budget = resilience.budget
        self.executor = ChainExecutor(
            self.router,
            resilience,
            breakers=self.breakers,
            health=self.health,
            budget=RetryBudget(
                ratio=budget.ratio,
                min_per_second=budget.min_per_second,
                window_seconds=budget.window_seconds,
            ),
            cache=self.cache,
            stats=self.stats,
        )
        self.sessions = SessionStore(
            self.redis,
            self.gate,
            prefix=prefix,
            ttl_seconds=settings.sessions.ttl_seconds,
            fallback_selector=settings.sessions.default_selector,
        )
        if not await self.gate.check():
            logger.warning("Redis is not reachable at start: serving fail-open until it is")
        await self.breakers.sync()
        interval = resilience.sync_interval_seconds
        for loop in (
            self.gate.watch(),
            self.breakers.run(interval),
            self.stats.run(interval),
            self.cache.run(),
            self.health.run(),
        ):
            self._tasks.append(asyncio.create_task(loop))
        logger.info(
            "gateway ready: {} models, {} chains, {} deployments",
            len(settings.models),
            len(settings.chains),
            len(deployments),
        )

    async def close(self) -> None:
        """Stop the loops, write what is pending to Redis, close what `start` opened."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for flush in (
            self.cache.flush if self.cache else None,
            self.stats.flush if self.stats else None,
            self.breakers.sync if self.breakers else None,
        ):
            if flush is not None:
                await flush()
        if self.http is not None:
            await self.http.close()
        if self.redis is not None and self._owns_redis:
            await self.redis.aclose()

    async def redis_ok(self) -> bool:
        """Whether Redis is in use and answers PING now (a failure switches to fail-open)."""
        if self.gate is None or not self.gate.available:
            return False
        return await self.gate.check()
