"""The API side of the planner: a replica the planner publishes as ready is routed to, with its
own breaker; once it is stopped it leaves routing, every view and Redis."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from services.capacity.policy import READY, STOPPING
from services.capacity.replicas import ReplicaRouting
from services.capacity.state import LoadReporter, PublishedModel, PublishedState, Replica
from services.platform.http_client import HTTPClient
from services.platform.metrics import Metrics
from services.platform.redis_gate import RedisGate
from services.providers.factory import build_provider, build_providers
from services.resilience.breaker import Outcome
from services.resilience.breaker_store import BreakerStore
from services.resilience.health_monitor import HealthMonitor
from services.routing.router import Router
from tests.capacity.test_capacity_planner import capacity_settings

REPLICA = Replica("large-model:port-9", "http://127.0.0.1:9/v1", ready=True)


def published(state: str) -> PublishedState:
    return PublishedState(planner="p", updated=0.0, target_selector="default",
                          target_role="large", threshold=1.0, signal="log_growth", observed={},
                          models={"large-model": PublishedModel("large", state, [REPLICA])})  # fmt: skip


async def test_a_stopped_replica_leaves_routing_the_views_and_redis(
    tmp_path: Path, redis_url: str
) -> None:
    settings = capacity_settings(tmp_path, redis_url, large={
        "model": "large-model", "session_selector": "default",
        "scaler": {"kind": "process", "provider": "openai"}})  # fmt: skip
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    gate, metrics = RedisGate(redis), Metrics()
    http = HTTPClient()
    try:
        providers = build_providers(settings, http, {})
        router = Router(settings, providers)
        breakers = BreakerStore(redis, gate, {}, prefix="fr:")
        health = HealthMonitor(settings.resilience.health, {}, probed=set())
        table: dict[str, tuple[str, object]] = {}
        routing = ReplicaRouting(settings, {}, router=router, breakers=breakers, health=health,
                                 http=http, deployment_table=table, metrics=metrics,  # type: ignore[arg-type]
                                 load=LoadReporter("fr:"), build_provider=build_provider)  # fmt: skip
        routing.state = published(READY)
        await routing.retire(routing.apply())
        assert [c.provider.name for c in router.candidates("large-model")] == [REPLICA.name]
        await breakers.record(REPLICA.name, Outcome.FAILURE)  # writes its hash in Redis
        for name in breakers.names:
            metrics.breaker(name, breakers.state(name).state)
        assert await redis.exists(f"fr:breaker:{REPLICA.name}")
        assert REPLICA.name in table and REPLICA.name in metrics.render().decode()

        routing.state = published(STOPPING)  # the planner drains it before stopping it
        await routing.retire(routing.apply())
        assert router.candidates("large-model") == []
        assert REPLICA.name not in breakers.names and REPLICA.name not in table
        assert f'circuit_breaker_state{{name="{REPLICA.name}"}}' not in metrics.render().decode()
        assert not await redis.exists(f"fr:breaker:{REPLICA.name}")
        await breakers.record(REPLICA.name, Outcome.SUCCESS)  # a call still in flight ends well
        await breakers.sync()
        assert not await redis.exists(f"fr:breaker:{REPLICA.name}"), "syncs leave it out"

        routing.state = published(READY)  # ready again: routed again
        await routing.retire(routing.apply())
        assert REPLICA.name in breakers.names and REPLICA.name in table
    finally:
        await http.close()
    await redis.aclose()
