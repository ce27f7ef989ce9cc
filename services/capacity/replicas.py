"""The API process's side of the capacity planner: publish this process's load, read the
planner's published state, route to its ready replicas, and pin new sessions to its target."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from loguru import logger

from services.capacity.gauges import PlannerGauges
from services.capacity.state import LoadReporter, PublishedState, Replica, read_state
from services.config import CapacityModel, Deployment, ScalerSettings, Settings
from services.platform.http_client import HTTPClient
from services.platform.metrics import Metrics
from services.platform.redis_gate import REDIS_ERRORS, RedisGate
from services.providers.base import Provider
from services.resilience.breaker_store import BreakerStore
from services.resilience.health_monitor import HealthMonitor
from services.routing.router import Router

BuildProvider = Callable[[str, Deployment, Settings, HTTPClient, Mapping[str, str]], Provider]


def replica_deployment(model: str, scaler: ScalerSettings, replica: Replica) -> Deployment:
    """The deployment a planner-started replica becomes (not probed: the planner checks it)."""
    return Deployment(
        provider=scaler.provider,
        base_url=replica.base_url,
        model=scaler.upstream_model or model,
        api_key_env=scaler.api_key_env,
        name=replica.name,
        probe=False,
    )


class ReplicaRouting:
    """What the API process knows of the planner, and the replicas it routes to."""

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str],
        *,
        router: Router,
        breakers: BreakerStore,
        health: HealthMonitor,
        http: HTTPClient,
        deployment_table: dict[str, tuple[str, Deployment]],
        metrics: Metrics,
        load: LoadReporter,
        build_provider: BuildProvider,
    ) -> None:
        self._settings = settings
        self._environ = environ
        self._router = router
        self._breakers = breakers
        self._health = health
        self._http = http
        self._table = deployment_table
        self._metrics = metrics
        self._gauges = metrics.extension("planner", PlannerGauges)
        self._load = load
        self._build = build_provider
        self._replicas: dict[str, Provider] = {}
        # The planner's last published state (None: no planner, the static config applies).
        self.state: PublishedState | None = None

    def view(self) -> dict[str, Any]:
        """The capacity planner as `/health` shows it."""
        if not self._settings.capacity.enabled:
            return {"enabled": False}
        state = self.state
        if state is None:
            return {"enabled": True, "up": False, "target": self.new_session_selector()}
        return {
            "enabled": True,
            "up": True,
            "planner": state.planner,
            "target": state.target_selector,
            "signal": state.signal,
            "threshold": state.threshold,
            "observed": state.observed,
            "models": {
                model: {
                    "role": entry.role,
                    "state": entry.state,
                    "replicas": len(entry.replicas),
                    "ready_replicas": sum(r.ready for r in entry.replicas),
                    "problem": entry.problem,
                }
                for model, entry in state.models.items()
            },
        }

    def new_session_selector(self) -> str:
        """What `/initiate_call` pins when the client names nothing: the planner's routing
        target while a planner is alive, else the configured default."""
        target = self.state.target_selector if self.state is not None else None
        if target is not None and self._router.knows(target):
            return target
        return self._settings.sessions.default_selector

    async def sync(self, redis: aioredis.Redis, gate: RedisGate) -> None:
        """Publish this process's load; read the planner's state and route to its replicas."""
        if not self._settings.capacity.enabled:
            return  # nobody reads the load counters: no Redis write for them
        if not gate.available:
            return
        try:
            await self._load.flush(redis)
            self.state = await read_state(redis, self._settings.redis.key_prefix)
        except REDIS_ERRORS:
            return  # the gate notices; the last known state stays until Redis answers
        await self.retire(self.apply())
        self._gauges.show(self.state)

    def apply(self) -> list[str]:
        """Make the routable replicas of the planner's state the router's extra deployments.

        A replica whose model is draining (`stopping`) or that is not ready is dropped here,
        before the planner stops it. Replicas without an endpoint (the `simulated` scaler) are
        state only and never routed to. Answers the replicas no longer routed to."""
        capacity = self._settings.capacity
        gone_all: list[str] = []
        wanted: dict[str, list[Provider]] = {capacity.large.model: [], capacity.small.model: []}
        published = self.state.models if self.state is not None else {}
        for model, managed in (
            (capacity.large.model, capacity.large),
            (capacity.small.model, capacity.small),
        ):
            entry = published.get(model)
            for replica in entry.routable() if entry is not None else []:
                if not replica.base_url:
                    continue
                provider = self._replicas.get(replica.name) or self._add(model, managed, replica)
                if provider is not None:
                    wanted[model].append(provider)
        for model, providers in wanted.items():
            before = {p.name for p in self._router.replicas(model)}
            for gone in before - {p.name for p in providers}:
                logger.info("no longer routing to {} replica {}", model, gone)
                self._replicas.pop(gone, None)
                gone_all.append(gone)
            self._router.set_replicas(model, providers)
        return gone_all

    async def retire(self, names: list[str]) -> None:
        """Replicas no longer routed to leave every view (/circuit-breakers, /health, /metrics,
        the fallback queue) and their breakers' Redis keys go. A replica that comes back (ready
        again) is added anew."""
        for name in names:
            self._table.pop(name, None)
            self._metrics.forget_deployment(name)
            await self._breakers.retire(name)

    def _add(self, model: str, managed: CapacityModel, replica: Replica) -> Provider | None:
        """A replica seen for the first time: its adapter, breaker and health window."""
        try:
            deployment = replica_deployment(model, managed.scaler, replica)
        except ValueError as exc:
            logger.error("ignoring replica {}: {}", replica.name, exc)
            return None
        provider = self._build(replica.name, deployment, self._settings, self._http, self._environ)
        self._replicas[replica.name] = provider
        self._table[replica.name] = (model, deployment)
        self._breakers.add(replica.name, self._settings.breaker_policy(deployment))
        self._health.add(replica.name, provider, probed=False)
        logger.info("routing to {} replica {} at {}", model, replica.name, replica.base_url)
        return provider
