"""Seed 000's demo endpoints: real turns through the chain walk, reported in the seed's shape.

    POST /api/admin/demo/run-single     {"prompt"?, "model"?}: one turn
    POST /api/admin/demo/run-scenarios  {"prompt"?}: one turn per selector (the default first,
                                        then every chain), one after the other
    GET  /api/admin/demo/summary        fallback statistics and core metrics, seed 000's names

Each turn is a real request: routed, metered and recorded like any other (the ledger counts it,
under the admin key's id), so these endpoints call real upstreams when real ones are configured.
A `model` that names no model or chain runs the default selector and says so (seed 000's example
asks for `gpt-4`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from services.api.chat import ChatParts, finish_answer, walk_turn
from services.api.json_routes import JsonBodyRoute
from services.api.ops import core_metrics
from services.api.parts import gateway_parts
from services.api.responses import json_response
from services.api.schemas import ModelId
from services.ledger.runtime import LedgerRuntime
from services.ledger.usage import TurnStart
from services.platform.request_context import caller_var, new_request_id
from services.resilience.fallback_stats import FallbackStatistics
from services.routing.outcomes import Failed

MAX_SCENARIOS = 8


class DemoParts(ChatParts, Protocol):
    """What these views read of the gateway: the chat path, and the statistics."""

    @property
    def stats(self) -> FallbackStatistics: ...
    @property
    def ledger_runtime(self) -> LedgerRuntime | None: ...


Parts = Annotated[DemoParts, Depends(gateway_parts)]
routes = APIRouter(prefix="/api/admin/demo", route_class=JsonBodyRoute)


class SingleRun(BaseModel):
    """One demo turn."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field("Hello world", min_length=1, max_length=10_000)
    model: ModelId | None = Field(None, description="A model or chain; else the default.")


class ScenarioRun(BaseModel):
    """The scenarios' prompt."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field("Hello world", min_length=1, max_length=10_000)


def selector_for(parts: DemoParts, model: str | None) -> tuple[str, str | None]:
    """The selector a demo turn runs, and a note when the asked-for model is not configured."""
    settings = parts.settings
    if model is not None and (model in settings.models or model in settings.chains):
        return model, None
    default = parts.replicas.new_session_selector()
    if model is None:
        return default, None
    return default, f"'{model}' is no configured model or chain; ran '{default}' instead"


async def run_turn(parts: DemoParts, prompt: str, selector: str) -> dict[str, Any]:
    """One real turn, reported as seed 000's demo result."""
    request = {"messages": [{"role": "user", "content": prompt}]}
    start = TurnStart(request, new_request_id(), None, selector, caller_var.get(),
                      time.perf_counter())  # fmt: skip
    routed = await walk_turn(parts, start, stream=False)
    if isinstance(routed, Failed):
        log, final, route, tokens = routed.log, None, None, 0
        error: str | None = routed.error.message
        attempts = len(log)
    else:
        record = finish_answer(parts, start, routed)
        log, final, route, tokens = record.attempts, routed.model, routed.route, record.tokens_out
        error, attempts = None, routed.attempts
    return {
        "request_id": start.request_id,
        "selector": selector,
        "success": error is None,
        "final_model": final,
        "route": route,
        "attempts": attempts,
        "tokens_generated": tokens,
        "duration_ms": round((time.perf_counter() - start.started) * 1000, 1),
        "attempted_models": list(dict.fromkeys(a.model for a in log)),
        "error": error,
    }


async def summary(parts: DemoParts) -> dict[str, Any]:
    """Seed 000's summary: fallback statistics (success rate in percent) and core metrics."""
    stats = await parts.stats.read()
    tried, succeeded = stats["total_fallback_attempts"], stats["total_fallback_successes"]
    return {
        "fallback_statistics": {
            "total_fallback_attempts": tried,
            "total_fallback_successes": succeeded,
            "success_rate": round(100 * succeeded / tried, 2) if tried else None,
        },
        "current_metrics": await core_metrics(parts.ledger_runtime, parts.stats),
    }


@routes.post("/run-single")
async def run_single(body: SingleRun, parts: Parts) -> Response:
    """One real turn through the chain, with what was tried and what answered."""
    selector, note = selector_for(parts, body.model)
    result = await run_turn(parts, body.prompt, selector)
    if note is not None:
        result["note"] = note
    return json_response({"demo_results": [result], **result})


@routes.post("/run-scenarios")
async def run_scenarios(parts: Parts, body: ScenarioRun | None = None) -> Response:
    """A turn per selector (the default, then each chain), then the summary."""
    prompt = body.prompt if body is not None else "Hello world"
    default = parts.replicas.new_session_selector()
    selectors = list(dict.fromkeys([default, *parts.settings.chains]))[:MAX_SCENARIOS]
    results = [await run_turn(parts, prompt, selector) for selector in selectors]
    return json_response({"demo_results": results, "summary": await summary(parts)})


@routes.get("/summary")
async def demo_summary(parts: Parts) -> Response:
    """Fallback statistics and core metrics, in seed 000's names."""
    return json_response(await summary(parts))
