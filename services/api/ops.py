"""The operations views: `/v1/models`, `/livez`, `/readyz`, `/health` (the seed format, SPEC
§9) and `/metrics` (Prometheus, merged over every worker process).

Seed 000's paths answer too: `/api/health` (= `/health`), `/api/metrics/prometheus`
(= `/metrics`) and `/api/metrics`, its core metrics as JSON."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends
from fastapi.responses import Response

from services import __version__
from services.api.parts import gateway_parts
from services.api.responses import json_response
from services.capacity.replicas import ReplicaRouting
from services.config import Settings
from services.ledger.runtime import LedgerRuntime
from services.platform.metrics import Metrics
from services.platform.redis_gate import REDIS_ERRORS, RedisGate
from services.platform.redis_topology import describe_primary, parse_redis_url
from services.resilience.breaker_store import BreakerStore
from services.resilience.fallback_stats import FallbackStatistics


class OpsParts(Protocol):
    """What these views read of the gateway."""

    @property
    def settings(self) -> Settings: ...
    @property
    def gate(self) -> RedisGate: ...
    @property
    def redis(self) -> aioredis.Redis: ...
    @property
    def draining(self) -> bool: ...
    @property
    def breakers(self) -> BreakerStore: ...
    @property
    def ledger_runtime(self) -> LedgerRuntime | None: ...
    @property
    def replicas(self) -> ReplicaRouting: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def stats(self) -> FallbackStatistics: ...


Parts = Annotated[OpsParts, Depends(gateway_parts)]
routes = APIRouter()


async def redis_answers(gate: RedisGate) -> bool:
    """Whether Redis is in use and answers PING now (a failure switches to fail-open)."""
    return gate.available and await gate.check()


async def redis_view(parts: OpsParts, redis_ok: bool) -> dict[str, Any]:
    """Which Redis this process uses: the mode its URL names and the primary it talks to now
    (after a Sentinel failover, the promoted replica), so replicas can be compared."""
    primary = None
    if redis_ok:
        try:
            primary = await describe_primary(parts.redis)
        except REDIS_ERRORS:
            primary = None
    return {"mode": parse_redis_url(parts.settings.redis.url).mode, "primary": primary}


@routes.get("/v1/models")
async def list_models(parts: Parts) -> Response:
    """Models and chains, in OpenAI's list shape (`kind` says which)."""
    data = [
        {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "fallback-routing",
            "kind": kind,
        }
        for kind, names in (("model", parts.settings.models), ("chain", parts.settings.chains))
        for name in names
    ]
    return json_response({"object": "list", "data": data})


@routes.get("/livez")
async def livez() -> Response:
    """The process is alive (the event loop answers)."""
    return json_response({"status": "alive"})


@routes.get("/readyz")
async def readyz(parts: Parts) -> Response:
    """Ready for traffic unless draining; a Redis outage means fail-open, not unready."""
    redis_ok = await redis_answers(parts.gate)
    ready = not parts.draining
    body = {
        "status": "ready" if ready else "not_ready",
        "redis_ok": redis_ok,
        "mode": "shared" if redis_ok else "fail-open",
        "draining": parts.draining,
    }
    return json_response(body, 200 if ready else 503)


@routes.get("/health")
@routes.get("/api/health")
async def health(parts: Parts) -> Response:
    """The seed format (SPEC §9): breaker state per provider, Redis, the ledger; plus the
    models and chains."""
    redis_ok = await redis_answers(parts.gate)
    board, runtime = parts.breakers, parts.ledger_runtime
    ledger = runtime.state() if runtime is not None else None
    db_ok = await runtime.database_ok() if runtime is not None else False
    models = {
        name: {"deployments": len(m.deployments), "local": m.local}
        for name, m in parts.settings.models.items()
    }
    last_write = ledger.last_db_write if ledger is not None else None
    problem = None
    if ledger is not None:
        problem = ledger.problem or (None if db_ok else "database unreachable")
    return json_response(
        {
            "status": "ok" if redis_ok and problem is None else "degraded",
            "providers": {name: board.state(name).state for name in board.names},
            "redis_ok": redis_ok,
            "redis": await redis_view(parts, redis_ok),
            "db_ok": db_ok,
            "buffer_len": ledger.buffer_len if ledger is not None else 0,
            "last_flush_ms": ledger.last_flush_ms if ledger is not None else None,
            "wal_size_bytes": ledger.wal_size_bytes if ledger is not None else 0,
            "last_db_write": last_write.strftime("%Y-%m-%dT%H:%M:%SZ") if last_write else None,
            "version": __version__,
            "mode": "shared" if redis_ok else "fail-open",
            "ledger": "off" if ledger is None else "on",
            "ledger_writer": ledger.writer if ledger is not None else None,
            "ledger_ok": problem is None,
            "ledger_problem": problem,
            "planner": parts.replicas.view(),
            "models": models,
            "chains": parts.settings.chain_steps(),
        }
    )


@routes.get("/metrics")
@routes.get("/api/metrics/prometheus")
async def metrics(parts: Parts) -> Response:
    """Prometheus exposition, merged over every worker process."""
    exporter, runtime = parts.metrics, parts.ledger_runtime
    if runtime is not None:
        exporter.ledger_levels(runtime.ledger)
    for name in parts.breakers.names:
        exporter.breaker(name, parts.breakers.state(name).state)
    return Response(exporter.render(), media_type=exporter.content_type)


async def core_metrics(runtime: LedgerRuntime | None, stats: FallbackStatistics) -> dict[str, Any]:
    """Seed 000's core metrics: the ledger's buffer, WAL and last flush, and upstream attempts
    (summed over every process)."""
    ledger = runtime.state() if runtime is not None else None
    last_write = ledger.last_db_write if ledger is not None else None
    return {
        "buffer_len": ledger.buffer_len if ledger is not None else 0,
        "wal_size_bytes": ledger.wal_size_bytes if ledger is not None else 0,
        "last_flush_ms": ledger.last_flush_ms if ledger is not None else None,
        "last_db_write": last_write.strftime("%Y-%m-%dT%H:%M:%SZ") if last_write else None,
        "attempts_total": (await stats.read())["total_attempts"],
    }


@routes.get("/api/metrics")
async def api_metrics(parts: Parts) -> Response:
    """Seed 000's core metrics as JSON (`/metrics` has them all, for Prometheus)."""
    return json_response(await core_metrics(parts.ledger_runtime, parts.stats))
