"""The API process's runtime, opened and closed together: Redis and HTTP clients, adapters,
router, chain executor with its breakers, health monitor, budget, cache and statistics, the
session store, and the background loops that keep them in step with Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.auth import KeyRing
from services.api.rate_limit import RateLimiter
from services.capacity.replicas import ReplicaRouting
from services.capacity.state import LoadReporter
from services.config import Deployment, Settings, redact_url
from services.ledger import db as ledger_db
from services.ledger.db import make_engine
from services.ledger.usage import UsageRecorder
from services.ledger.wal import DB_ERRORS, Ledger
from services.ledger.writer import read_status
from services.platform.metrics import Metrics
from services.platform.redis_connection import async_client
from services.platform.redis_gate import REDIS_ERRORS, RedisGate
from services.providers.factory import build_provider, build_providers
from services.resilience.breaker_store import BreakerStore
from services.resilience.fallback_stats import FallbackStatistics
from services.resilience.health_monitor import HealthMonitor
from services.resilience.retry_budget import RetryBudget
from services.routing.executor import ChainExecutor
from services.routing.response_cache import ResponseCache
from services.routing.router import Router
from services.routing.sessions import SessionStore


@dataclass(frozen=True, slots=True)
class LedgerState:
    """The ledger as the health endpoints report it."""

    buffer_len: int
    wal_size_bytes: int
    last_flush_ms: float | None
    last_db_write: datetime | None
    writer: str  # inline | running | missing (an external writer's heartbeat is stale)


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
            await self._start_ledger()
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
        await self.refresh_disabled()
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

    async def _start_ledger(self) -> None:
        """Open the database (migrated to head), register the deployments, replay dead WALs."""
        settings = self.settings
        self.engine = make_engine(settings.database.url)
        wal_dir = Path(settings.ledger.wal_dir)
        self.ledger = Ledger(
            self.engine,
            wal_dir,
            flush_interval=settings.ledger.flush_interval_seconds,
            batch_size=settings.ledger.batch_size,
            fsync=settings.ledger.fsync,
            writes_database=settings.ledger.writer != "external",  # auto alone: inline
        )
        self.ledger.start()  # the WAL first: requests can be recorded even if the DB is down
        try:
            await ledger_db.migrate(self.engine, wal_dir)
            await ledger_db.sync_providers(self.engine, self._registry_rows())
            replayed = await self.ledger.replay()
            self.ledger.last_db_write = self.ledger.last_db_write or await ledger_db.last_write(
                self.engine
            )
        except DB_ERRORS as exc:
            self.ledger.db_ok = False
            logger.error(
                "ledger database unavailable at start ({}): records wait in the WAL",
                type(exc).__name__,
            )
        else:
            logger.info(
                "ledger ready at {} ({} records replayed)",
                redact_url(settings.database.url),
                replayed,
            )

    def ledger_state(self) -> LedgerState | None:
        """What `/health` and `/api/llm/health` say of the ledger; None when it is off.

        With an external writer the flush timings and the last write are the writer's, read
        from its status file."""
        ledger = self.ledger
        if ledger is None:
            return None
        if ledger.writes_database:
            return LedgerState(ledger.pending, ledger.wal_size_bytes, ledger.last_flush_ms,
                               ledger.last_db_write, "inline")  # fmt: skip
        status = read_status(Path(self.settings.ledger.wal_dir))
        alive = status is not None and status.alive(time.time())
        return LedgerState(
            ledger.pending,
            ledger.wal_size_bytes,
            status.last_flush_ms if status else None,
            (status.last_db_write_at if status else None) or ledger.last_db_write,
            "running" if alive else "missing",
        )

    def _registry_rows(self) -> list[dict[str, Any]]:
        rows = []
        for priority, (model, name, deployment) in enumerate(self.settings.deployments()):
            policy = self.settings.breaker_policy(deployment)
            rows.append(
                {
                    "name": name,
                    "model": model,
                    "kind": deployment.provider,
                    "priority": priority,
                    "local": self.settings.models[model].local,
                    "breaker": policy.model_dump(),
                }
            )
        return rows

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Switch a deployment on or off: database (the record), Redis (every process), here."""
        if self.engine is not None:
            await ledger_db.set_enabled(self.engine, name, enabled)
        (self.disabled.discard if enabled else self.disabled.add)(name)
        if self.redis is not None and self.gate is not None and self.gate.available:
            key = self.settings.redis.key_prefix + "disabled"
            try:
                await (self.redis.srem(key, name) if enabled else self.redis.sadd(key, name))
            except REDIS_ERRORS as exc:
                self.gate.mark_down(exc)
        logger.warning(
            "deployment {} {} by an operator", name, "enabled" if enabled else "disabled"
        )

    async def refresh_disabled(self) -> None:
        """Take the operators' switches from Redis (or, at start, from the database)."""
        fresh: set[str] | None = None
        if self.redis is not None and self.gate is not None and self.gate.available:
            key = self.settings.redis.key_prefix + "disabled"
            try:
                if self.engine is not None and not await self.redis.exists(key):
                    names = await ledger_db.disabled_providers(self.engine)
                    if names:
                        await self.redis.sadd(key, *names)
                fresh = {str(n) for n in await self.redis.smembers(key)}
            except REDIS_ERRORS as exc:
                self.gate.mark_down(exc)
            except DB_ERRORS:
                pass
        if fresh is not None and fresh != self.disabled:
            self.disabled.clear()
            self.disabled.update(fresh)

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
                    await self._snapshot_health()

    async def _snapshot_health(self) -> None:
        assert self.breakers is not None
        assert self.health is not None
        assert self.engine is not None
        now = datetime.now(UTC)
        rows = []
        for name in self.breakers.names:
            summary = self.health.summary(name)
            latency = summary["latency_ms"] or {}
            rows.append(
                {
                    "ts": now,
                    "deployment": name,
                    "breaker_state": self.breakers.state(name).state,
                    "healthy": summary["healthy"],
                    "success_rate": summary["success_rate"],
                    "p50_ms": latency.get("p50"),
                    "p95_ms": latency.get("p95"),
                }
            )
        try:
            await ledger_db.insert_health(self.engine, rows)
        except DB_ERRORS as exc:
            logger.warning("health snapshot not stored ({})", type(exc).__name__)

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
        if self.ledger is not None:
            await self.ledger.close()
        if self.engine is not None:
            await self.engine.dispose()
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
