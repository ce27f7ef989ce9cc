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
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from services.api.responses import json_response
from services.config import TIERS, Settings
from services.errors import NotFound
from services.gateway import GatewayRef
from services.resilience.breaker import OPEN


def resilience_routes(settings: Settings, ref: GatewayRef) -> APIRouter:
    """The routes, reading the gateway's breakers, health monitor and statistics."""
    routes = APIRouter()

    def breaker_view(name: str) -> dict[str, Any]:
        gw = ref()
        board, health = gw.breakers, gw.health
        model, deployment = gw.deployment_table[name]  # live: planner replicas included
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
            "rejected_by_this_process": board.rejections[name],
            "health": health.summary(name),
        }

    @routes.get("/circuit-breakers")
    async def circuit_breakers() -> Response:
        """Every deployment's breaker (state, window, totals) and passive/active health."""
        board = ref().breakers
        shared = await board.sync()
        return json_response(
            {
                "shared": shared,
                "circuit_breakers": {name: breaker_view(name) for name in board.names},
            }
        )

    @routes.post("/circuit-breakers/{name}/reset")
    async def reset_breaker(name: str) -> Response:
        """Close a deployment's breaker by hand, for every API process."""
        board = ref().breakers
        if name not in ref().deployment_table:
            raise NotFound(f"no deployment named '{name}'", code="deployment_not_found")
        await board.reset(name)
        return json_response({"name": name, **breaker_view(name)})

    @routes.get("/api/admin/fallback/queue")
    async def fallback_queue() -> Response:
        """Each chain's steps in order; for models, their deployments and whether usable now."""
        gw = ref()
        board, health = gw.breakers, gw.health
        await board.sync()
        by_model: dict[str, list[str]] = {}
        for name, (model, _) in gw.deployment_table.items():
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
                        "enabled": d not in gw.disabled,
                        "breaker": board.state(d).state,
                        "healthy": health.healthy(d),
                        "usable": d not in gw.disabled and health.healthy(d) and board.usable(d),
                    }
                    for d in by_model[name]
                ],
            }

        chains = {name: [step(s) for s in steps] for name, steps in settings.chain_steps().items()}
        return json_response(
            {
                "default_selector": settings.sessions.default_selector,
                "chains": chains,
                "models": {m: step(m)["deployments"] for m in by_model},
                "retry": settings.resilience.retry.model_dump(),
                "budget": settings.resilience.budget.model_dump(),
                "fallback_jitter": settings.resilience.fallback_jitter.model_dump(),
                "deadline_seconds": settings.resilience.deadline_seconds,
            }
        )

    @routes.get("/api/admin/fallback/statistics")
    async def fallback_statistics() -> Response:
        """Requests per tier and per model, attempts, retries, budget and deadline cut-offs."""
        return json_response(await ref().stats.read())

    @routes.post("/api/admin/fallback/reset-statistics")
    async def reset_statistics() -> Response:
        """Zero the fallback statistics of every process."""
        stats = ref().stats
        await stats.reset()
        return json_response({"reset": True, **(await stats.read())})

    return routes
