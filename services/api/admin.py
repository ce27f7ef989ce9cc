"""The resilience views: circuit breakers, the fallback chains, and fallback statistics (SPEC §5).

    GET  /circuit-breakers                     every deployment's breaker and health
    POST /circuit-breakers/{name}/reset        close one breaker, in every process
    GET  /api/admin/fallback/queue             the chains, step by step, with availability
    GET  /api/admin/fallback/statistics        how requests were served, summed over processes
    POST /api/admin/fallback/reset-statistics  zero those counters

Breaker views sync with Redis first, so what one process shows is what every process routes by.
Access control for the admin endpoints arrives with the API keys (SPEC §10).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from services.api.json_routes import JsonBodyRoute
from services.api.parts import gateway_parts
from services.api.responses import json_response
from services.config import TIERS, Deployment, Settings
from services.errors import NotFound
from services.resilience.breaker import OPEN
from services.resilience.breaker_store import BreakerStore
from services.resilience.fallback_stats import FallbackStatistics
from services.resilience.health_monitor import HealthMonitor


class ResilienceParts(Protocol):
    """What these views read of the gateway."""

    @property
    def settings(self) -> Settings: ...
    @property
    def breakers(self) -> BreakerStore: ...
    @property
    def health(self) -> HealthMonitor: ...
    @property
    def stats(self) -> FallbackStatistics: ...
    @property
    def deployment_table(self) -> Mapping[str, tuple[str, Deployment]]: ...
    @property
    def disabled(self) -> set[str]: ...


Parts = Annotated[ResilienceParts, Depends(gateway_parts)]
routes = APIRouter(route_class=JsonBodyRoute)


def breaker_view(parts: ResilienceParts, name: str) -> dict[str, Any]:
    board, health = parts.breakers, parts.health
    model, deployment = parts.deployment_table[name]  # live: planner replicas included
    policy = board.policy(name)
    state = board.state(name)
    now = time.time()
    calls, failures = state.window(policy, now)
    return {
        "model": model,
        "provider": deployment.provider,
        "state": state.state,
        "retry_in_seconds": (
            round(max(0.0, state.open_until - now), 3) if state.state == OPEN else None
        ),
        "trips": state.trips,
        "consecutive_failures": state.consecutive_failures,
        "window": {
            "seconds": policy.window_seconds,
            "calls": calls,
            "failures": failures,
            "failure_rate": round(failures / calls, 4) if calls else None,
        },
        "half_open_probes_in_flight": state.probes,
        "total_requests": state.requests,
        "total_successes": state.successes,
        "total_failures": state.failures,
        "total_timeouts": state.timeouts,
        "uptime_seconds": round(board.uptime(name), 3),
        "rejected_by_this_process": board.rejections[name],
        "health": health.summary(name),
    }


@routes.get("/circuit-breakers")
async def circuit_breakers(parts: Parts) -> Response:
    """Every deployment's breaker (state, window, totals) and passive/active health."""
    board = parts.breakers
    shared = await board.sync()
    return json_response(
        {
            "shared": shared,
            "circuit_breakers": {name: breaker_view(parts, name) for name in board.names},
        }
    )


@routes.post("/circuit-breakers/{name:path}/reset")
async def reset_breaker(name: str, parts: Parts) -> Response:
    """Close a deployment's breaker by hand, for every API process."""
    board = parts.breakers
    if name not in parts.deployment_table:
        raise NotFound(f"no deployment named '{name}'", code="deployment_not_found")
    await board.reset(name)
    return json_response({"name": name, **breaker_view(parts, name)})


@routes.get("/api/admin/fallback/queue")
async def fallback_queue(parts: Parts) -> Response:
    """Each chain's steps in order; for models, their deployments and whether usable now."""
    board, health = parts.breakers, parts.health
    await board.sync()
    by_model: dict[str, list[str]] = {}
    for name, (model, _) in parts.deployment_table.items():
        by_model.setdefault(model, []).append(name)

    def step(name: str) -> dict[str, Any]:
        if name in TIERS:
            return {"step": name, "kind": "tier"}
        return {
            "step": name,
            "kind": "model",
            "deployments": [
                {
                    "name": d,
                    "enabled": d not in parts.disabled,
                    "breaker": board.state(d).state,
                    "healthy": health.healthy(d),
                    "usable": d not in parts.disabled and health.healthy(d) and board.usable(d),
                }
                for d in by_model[name]
            ],
        }

    chains = {
        name: [step(s) for s in steps] for name, steps in parts.settings.chain_steps().items()
    }
    return json_response(
        {
            "default_selector": parts.settings.sessions.default_selector,
            "chains": chains,
            "models": {m: step(m)["deployments"] for m in by_model},
            "retry": parts.settings.resilience.retry.model_dump(),
            "budget": parts.settings.resilience.budget.model_dump(),
            "fallback_jitter": parts.settings.resilience.fallback_jitter.model_dump(),
            "deadline_seconds": parts.settings.resilience.deadline_seconds,
        }
    )


@routes.get("/api/admin/fallback/statistics")
async def fallback_statistics(parts: Parts) -> Response:
    """Requests per tier and per model, attempts, retries, budget and deadline cut-offs."""
    return json_response(await parts.stats.read())


@routes.post("/api/admin/fallback/reset-statistics")
async def reset_statistics(parts: Parts) -> Response:
    """Zero the fallback statistics of every process."""
    stats = parts.stats
    await stats.reset()
    return json_response({"reset": True, **(await stats.read())})
