"""The API process's runtime, opened and closed together: Redis and HTTP clients, adapters,
router, chain executor with its breakers, health monitor, budget, cache and statistics, the
session store, and the background loops that keep them in step with Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from loguru import logger

from services.alerts.sender import AlertSender
from services.alerts.sources import breaker_hook, health_hook
from services.api.budgets import Budgets
from services.api.rate_limit import RateLimiter
from services.capacity.replicas import ReplicaRouting
from services.capacity.state import LoadReporter
from services.config import Deployment, Settings
from services.errors import GatewayError
from services.ledger.runtime import LedgerRuntime
from services.ledger.switches import OperatorSwitches
from services.ledger.usage import LedgerObserver, Metering
from services.platform.http_client import HTTPClient
from services.platform.metrics import Metrics
from services.platform.redis_connection import async_client
from services.platform.redis_gate import RedisGate
from services.platform.tracing import Tracing, open_tracing
from services.providers.base import Provider
from services.providers.factory import build_provider, build_providers
from services.resilience.breaker_store import BreakerStore
from services.resilience.fallback_stats import FallbackStatistics
from services.resilience.health_monitor import HealthMonitor
from services.resilience.retry_budget import RetryBudget
from services.routing.executor import ChainExecutor
from services.routing.pin_cache import PinCache, follow_invalidations
from services.routing.response_cache import ResponseCache
from services.routing.router import Router
from services.routing.sessions import SessionStore
from services.routing.spans import RequestSpans
from services.routing.turn import TurnObserver, Turns
from services.routing.turn_metrics import TurnMetrics


@dataclass(kw_only=True)
class Gateway:
    """Everything a request handler needs, every part built: `open_gateway` makes it, `close`
    stops its loops and closes its clients."""

    settings: Settings
    environ: Mapping[str, str]
    redis: aioredis.Redis
    http: HTTPClient
    gate: RedisGate
    router: Router
    executor: ChainExecutor
    breakers: BreakerStore
    health: HealthMonitor
    cache: ResponseCache
    stats: FallbackStatistics
    sessions: SessionStore
    limiter: RateLimiter
    budgets: Budgets
    # The end of every chat turn: its record (tokens, cost) and the observers that receive it.
    metering: Metering
    turns: Turns
    # The capacity planner as this process sees it, and its replicas.
    replicas: ReplicaRouting
    switches: OperatorSwitches
    metrics: Metrics
    load: LoadReporter
    alerts: AlertSender
    tracing: Tracing | None
    # Deployments an operator switched off (POST /api/llm/providers/{name}/enable): shared with
    # the executor, refreshed from Redis by every process.
    disabled: set[str]
    # Every deployment by name, (model, settings): the configured ones, plus the replicas the
    # capacity planner runs (added and dropped as it publishes them).
    deployment_table: dict[str, tuple[str, Deployment]]
    # None only when the configuration turns the ledger off (`ledger.enabled: false`).
    ledger_runtime: LedgerRuntime | None
    owns_redis: bool
    draining: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    def start_draining(self) -> None:
        """Shutdown has begun: /readyz answers 503 from now on."""
        self.draining = True

    def start_loops(self) -> None:
        """Run the background loops that keep the parts in step with Redis and the database."""
        interval = self.settings.resilience.sync_interval_seconds
        loops = [
            self.gate.watch(),
            self.breakers.run(interval),
            self.stats.run(interval),
            self.cache.run(),
            self.health.run(),
            self._housekeeping(interval),
            self._adopt_legacy_keys(),
        ]
        if self.sessions.cache.enabled:
            loops.append(follow_invalidations(self.redis, self.sessions.invalidation_channel,
                                              self.sessions.cache))  # fmt: skip
        if self.ledger_runtime is not None:
            loops.append(self.ledger_runtime.ledger.run())
        alerting = self.settings.alerts
        if self.alerts.enabled:
            loops.append(self.alerts.run())
            if (self.ledger_runtime is not None and alerting.daily_cost_usd is not None
                    and self.alerts.wanted("cost.daily")):  # fmt: skip
                # Reads the database: only this alert loads the database layer at start in a
                # process with an external writer (services/ledger/runtime.py).
                from services.ledger.cost_watch import watch_daily_cost

                loops.append(watch_daily_cost(self.ledger_runtime.engine, self.alerts,
                                              alerting.daily_cost_usd,
                                              alerting.cost_check_interval_seconds))  # fmt: skip
        for loop in loops:
            self.tasks.append(asyncio.create_task(loop, name=getattr(loop, "__qualname__", "loop")))

    async def _adopt_legacy_keys(self) -> None:
        """Once at start: budget keys from before the cluster-safe layout get its names."""
        await self.budgets.adopt_legacy_keys()

    async def _housekeeping(self, interval: float) -> None:
        """Operator switches, gauges and health snapshots, on the sync interval."""
        last_snapshot = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            await self.switches.refresh()
            await self.replicas.sync(self.redis, self.gate)
            await self.limiter.flush()
            for name in self.breakers.names:
                self.metrics.breaker(name, self.breakers.state(name).state)
            runtime = self.ledger_runtime
            if runtime is not None:
                self.metrics.ledger_levels(runtime.ledger)
                if loop.time() - last_snapshot >= self.settings.ledger.health_snapshot_seconds:
                    last_snapshot = loop.time()
                    await runtime.snapshot_health(self.breakers, self.health)

    async def close(self) -> None:
        """Stop the loops, flush the ledger, write what is pending to Redis, close clients."""
        for task in self.tasks:
            task.cancel()
        # Bounded: a loop that does not end on cancellation must not hold the process hostage
        # (a worker once hung here under load; the names and stacks say which loop it was).
        _, stuck = await asyncio.wait(self.tasks, timeout=5) if self.tasks else (set(), set())
        for task in stuck:
            logger.error("background loop {} did not stop on cancellation: {}", task.get_name(),
                         "; ".join(str(frame) for frame in task.get_stack()))  # fmt: skip
        self.tasks.clear()
        await self.alerts.close()
        if self.tracing is not None:
            await self.tracing.close()
        if self.ledger_runtime is not None:
            await self.ledger_runtime.close()
        await self.cache.flush()
        await self.stats.flush()
        await self.breakers.sync()
        await self.http.close()
        if self.owns_redis:
            await self.redis.aclose()


async def open_gateway(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    metrics: Metrics,
    redis: aioredis.Redis | None = None,
) -> Gateway:
    """Open the Redis client and the upstream pool, build every part, start the loops."""
    owns_redis = redis is None
    redis = redis or async_client(settings.redis.url, timeout=settings.redis.socket_timeout_seconds)
    http = upstream_client(settings)
    prefix = settings.redis.key_prefix
    gate = RedisGate(redis)
    providers = build_providers(settings, http, environ)
    table = {name: (model, d) for model, name, d in settings.deployments()}
    disabled: set[str] = set()
    load = LoadReporter(prefix)
    router = Router(settings, providers)
    tracing = open_tracing(settings.otel, environ)
    breakers, health, cache, stats, executor = walk_parts(
        settings, redis, gate, router, providers, table, disabled, tracing
    )
    alerts = alert_sender(settings, environ, redis, gate, breakers, health)
    sessions = SessionStore(redis, gate, prefix=prefix, ttl_seconds=settings.sessions.ttl_seconds,
                            fallback_selector=settings.sessions.default_selector,
                            cache=PinCache(settings.sessions.cache_refresh_seconds))  # fmt: skip
    if not await gate.check():
        logger.warning("Redis is not reachable at start: serving fail-open until it is")
    await breakers.sync()
    ledger_runtime = await LedgerRuntime.open(settings) if settings.ledger.enabled else None
    replicas = ReplicaRouting(
        settings,
        environ,
        router=router,
        breakers=breakers,
        health=health,
        http=http,
        deployment_table=table,
        metrics=metrics,
        load=load,
        build_provider=build_provider,
    )
    limiter = RateLimiter(redis, gate, settings.api.rate_limit, prefix=prefix)
    budgets = Budgets(redis, gate, settings, prefix=prefix, alerts=alerts)
    switches = OperatorSwitches(redis, gate, ledger_runtime, disabled, prefix=prefix)
    await switches.refresh()
    gateway = Gateway(
        settings=settings,
        environ=environ,
        redis=redis,
        http=http,
        gate=gate,
        router=router,
        executor=executor,
        breakers=breakers,
        health=health,
        cache=cache,
        stats=stats,
        sessions=sessions,
        limiter=limiter,
        budgets=budgets,
        metering=Metering(settings),
        turns=turn_observers(
            settings, ledger_runtime, table, metrics, [load, limiter, budgets], tracing
        ),
        replicas=replicas,
        switches=switches,
        metrics=metrics,
        load=load,
        alerts=alerts,
        tracing=tracing,
        disabled=disabled,
        deployment_table=table,
        ledger_runtime=ledger_runtime,
        owns_redis=owns_redis,
    )
    gateway.start_loops()
    logger.info("gateway ready: {} models, {} chains, {} deployments",
                len(settings.models), len(settings.chains), len(table))  # fmt: skip
    return gateway


def alert_sender(
    settings: Settings,
    environ: Mapping[str, str],
    redis: aioredis.Redis,
    gate: RedisGate,
    breakers: BreakerStore,
    health: HealthMonitor,
) -> AlertSender:
    """The process's alerts, told of breaker and health changes when a webhook is configured."""
    alerts = AlertSender(settings.alerts, environ, redis, gate, prefix=settings.redis.key_prefix)
    if alerts.enabled:
        breakers.on_change = breaker_hook(alerts)
        health.on_change = health_hook(alerts)
    return alerts


def upstream_client(settings: Settings) -> HTTPClient:
    """The one keep-alive pool every adapter of this process shares. It keeps no cookies: one
    a provider sets (a load balancer's affinity, a bot-check token) must not ride along on
    every later request of every client of this process."""
    return HTTPClient(max_connections=settings.upstream.max_connections)


def walk_parts(
    settings: Settings,
    redis: aioredis.Redis,
    gate: RedisGate,
    router: Router,
    providers: Mapping[str, Sequence[Provider]],
    table: dict[str, tuple[str, Deployment]],
    disabled: set[str],
    tracing: Tracing | None = None,
) -> tuple[BreakerStore, HealthMonitor, ResponseCache, FallbackStatistics, ChainExecutor]:
    """The chain executor and what it walks with: breakers, health, cache and statistics."""
    resilience, prefix = settings.resilience, settings.redis.key_prefix
    by_name = {p.name: p for group in providers.values() for p in group}
    deployments = {name: d for _, name, d in settings.deployments()}
    breakers = BreakerStore(
        redis,
        gate,
        {name: settings.breaker_policy(d) for name, d in deployments.items()},
        prefix=prefix,
    )
    gate.on_recover(breakers.sync)
    health = HealthMonitor(
        resilience.health,
        by_name,
        probed={n for n, d in deployments.items() if d.probe.enabled},
    )
    cache = ResponseCache(redis, gate, resilience.cache, prefix=prefix)
    stats = FallbackStatistics(redis, gate, prefix=prefix)
    budget = resilience.budget
    executor = ChainExecutor(
        router,
        settings,
        breakers=breakers,
        health=health,
        budget=RetryBudget(
            ratio=budget.ratio,
            min_per_second=budget.min_per_second,
            window_seconds=budget.window_seconds,
        ),
        cache=cache,
        stats=stats,
        disabled=disabled,
        deployments=table,
        tracing=tracing,
    )
    return breakers, health, cache, stats, executor


def turn_observers(
    settings: Settings,
    ledger_runtime: LedgerRuntime | None,
    table: dict[str, tuple[str, Deployment]],
    metrics: Metrics,
    others: list[TurnObserver],
    tracing: Tracing | None = None,
) -> Turns:
    """Who hears of every finished chat turn: the ledger first (the record that must not be
    lost), then the metrics, then `others` (the planner's load counter, the rate limiter, the
    budgets), then the request spans when tracing is on."""
    observers: list[TurnObserver] = [TurnMetrics(metrics), *others]
    if tracing is not None:
        observers.append(RequestSpans(tracing))
    if ledger_runtime is None:
        return Turns(observers)
    ledger = LedgerObserver(settings, ledger_runtime.ledger, table)
    return Turns([ledger, *observers], admissions=[ledger.admit])


class GatewayRef:
    """The app's gateway once its lifespan has opened it (routes are built before that)."""

    __slots__ = ("_gateway",)

    def __init__(self) -> None:
        self._gateway: Gateway | None = None

    def set(self, gateway: Gateway | None) -> None:
        """The lifespan opened (or closed) the gateway."""
        self._gateway = gateway

    def __call__(self) -> Gateway:
        """The open gateway; uvicorn serves no request before the lifespan has opened it."""
        gateway = self._gateway
        if gateway is None:
            raise GatewayError("the gateway is starting or stopping", status=503, code="starting")
        return gateway
