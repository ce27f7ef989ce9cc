"""The API process's runtime, opened and closed together: Redis and HTTP clients, adapters,
router, chain executor with its breakers, health monitor, budget, cache and statistics, the
session store, and the background loops that keep them in step with Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.auth import KeyRing
from services.api.rate_limit import RateLimiter
from services.capacity.replicas import ReplicaRouting
from services.capacity.state import LoadReporter
from services.config import Deployment, Settings
from services.ledger.runtime import LedgerRuntime, LedgerState
from services.ledger.switches import OperatorSwitches
from services.ledger.usage import UsageRecorder
from services.ledger.wal import Ledger
from services.platform.metrics import Metrics
from services.platform.redis_connection import async_client
from services.platform.redis_gate import RedisGate
from services.providers.factory import build_provider, build_providers
from services.resilience.breaker_store import BreakerStore
from services.resilience.fallback_stats import FallbackStatistics
from services.resilience.health_monitor import HealthMonitor
from services.resilience.retry_budget import RetryBudget
from services.routing.executor import ChainExecutor
from services.routing.response_cache import ResponseCache
from services.routing.router import Router
from services.routing.sessions import SessionStore


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
    engine: AsyncEngine | None = None
    ledger: Ledger | None = None
    ledger_runtime: LedgerRuntime | None = None
    switches: OperatorSwitches | None = None
    recorder: UsageRecorder | None = None
    metrics: Metrics = field(default_factory=Metrics)
    # Deployments an operator switched off (POST /api/llm/providers/{name}/enable): shared with
    # the executor, refreshed from Redis by every process.
    disabled: set[str] = field(default_factory=set)
    draining: bool = False
    # Every deployment by name, (model, settings): the configured ones, plus the replicas the
    # capacity planner runs (added and dropped as it publishes them).
    deployment_table: dict[str, tuple[str, Deployment]] = field(default_factory=dict)
    # The capacity planner as this process sees it, and its replicas (set by `start`).
    replicas: ReplicaRouting | None = None
    load: LoadReporter = field(init=False)
    keys: KeyRing = field(init=False)
    limiter: RateLimiter | None = None
    _owns_redis: bool = field(default=False, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.keys = KeyRing.from_env(self.environ)
        self.deployment_table.update(
            {name: (model, d) for model, name, d in self.settings.deployments()}
        )
        self.load = LoadReporter(self.settings.redis.key_prefix)

    def planner_view(self) -> dict[str, Any]:
        """The capacity planner as `/health` shows it."""
        assert self.replicas is not None  # set by `start`, before any request
        return self.replicas.view()

    def new_session_selector(self) -> str:
        """What `/initiate_call` pins when the client names nothing."""
        assert self.replicas is not None
        return self.replicas.new_session_selector()

    def ledger_state(self) -> LedgerState | None:
        """What `/health` and `/api/llm/health` say of the ledger; None when it is off."""
        return self.ledger_runtime.state() if self.ledger_runtime is not None else None

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Switch a deployment on or off, everywhere (services/ledger/switches.py)."""
        assert self.switches is not None  # set by `start`, before any request
        await self.switches.set_enabled(name, enabled)

    async def refresh_disabled(self) -> None:
        """Take the operators' switches from Redis."""
        if self.switches is not None:
            await self.switches.refresh()

    def start_draining(self) -> None:
        """Shutdown has begun: /readyz answers 503 from now on."""
        self.draining = True

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
            resilience.health,
            by_name,
            probed={n for n, d in deployments.items() if d.probe.enabled},
        )
        self.cache = ResponseCache(self.redis, self.gate, resilience.cache, prefix=prefix)
        self.stats = FallbackStatistics(self.redis, self.gate, prefix=prefix)
        budget = resilience.budget
        self.executor = ChainExecutor(
            self.router,
            settings,
            breakers=self.breakers,
            health=self.health,
            budget=RetryBudget(
                ratio=budget.ratio,
                min_per_second=budget.min_per_second,
                window_seconds=budget.window_seconds,
            ),
            cache=self.cache,
            stats=self.stats,
            disabled=self.disabled,
            deployments=self.deployment_table,
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
        if settings.ledger.enabled:
            self.ledger_runtime = await LedgerRuntime.open(settings)
            self.engine, self.ledger = self.ledger_runtime.engine, self.ledger_runtime.ledger
        self.replicas = ReplicaRouting(
            settings,
            self.environ,
            router=self.router,
            breakers=self.breakers,
            health=self.health,
            http=self.http,
            deployment_table=self.deployment_table,
            metrics=self.metrics,
            load=self.load,
            build_provider=build_provider,
        )
        self.limiter = RateLimiter(self.redis, self.gate, settings.api.rate_limit, prefix=prefix)
        self.recorder = UsageRecorder(
            settings, self.ledger, self.metrics, self.deployment_table, self.load, self.limiter
        )
        self.switches = OperatorSwitches(
            self.redis, self.gate, self.engine, self.disabled, prefix=prefix
        )
        await self.switches.refresh()
        interval = resilience.sync_interval_seconds
        loops = [
            self.gate.watch(),
            self.breakers.run(interval),
            self.stats.run(interval),
            self.cache.run(),
            self.health.run(),
            self._housekeeping(interval),
        ]
        if self.ledger is not None:
            loops.append(self.ledger.run())
        for loop in loops:
            self._tasks.append(
                asyncio.create_task(loop, name=getattr(loop, "__qualname__", "loop"))
            )
        logger.info(
            "gateway ready: {} models, {} chains, {} deployments",
            len(settings.models),
            len(settings.chains),
            len(deployments),
        )

    async def _housekeeping(self, interval: float) -> None:
        """Operator switches, gauges and health snapshots, on the sync interval."""
        last_snapshot = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            await self.refresh_disabled()
            assert self.replicas is not None
            assert self.redis is not None
            assert self.gate is not None
            await self.replicas.sync(self.redis, self.gate)
            if self.limiter is not None:
                await self.limiter.flush()
            assert self.breakers is not None
            for name in self.breakers.names:
                self.metrics.breaker(name, self.breakers.state(name).state)
            if self.ledger is not None:
                self.metrics.buffer_len.set(self.ledger.pending)
                self.metrics.wal_size.set(self.ledger.wal_size_bytes)
                if loop.time() - last_snapshot >= self.settings.ledger.health_snapshot_seconds:
                    last_snapshot = loop.time()
                    assert self.health is not None
                    if self.ledger_runtime is not None:
                        await self.ledger_runtime.snapshot_health(self.breakers, self.health)

    async def close(self) -> None:
        """Stop the loops, flush the ledger, write what is pending to Redis, close clients."""
        for task in self._tasks:
            task.cancel()
        # Bounded: a loop that does not end on cancellation must not hold the process hostage
        # (a worker once hung here under load; the names and stacks say which loop it was).
        _, stuck = await asyncio.wait(self._tasks, timeout=5) if self._tasks else (set(), set())
        for task in stuck:
            logger.error("background loop {} did not stop on cancellation: {}", task.get_name(),
                         "; ".join(str(frame) for frame in task.get_stack()))  # fmt: skip
        self._tasks.clear()
        if self.ledger_runtime is not None:
            await self.ledger_runtime.close()
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
