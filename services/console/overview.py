"""What the console page shows, in one read: `/api/admin/console`.

Latency and success per deployment come from the ledger's upstream calls of the last hour, which
every API process writes, so the page shows the same figures whichever worker answers; with the
ledger off they come from this process's passive health window. Reading Redis (the planner's
timeline) or the database may fail: the page then shows what it has and says what is missing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from services.capacity.replicas import ReplicaRouting
from services.capacity.state import read_timeline
from services.config import TIERS, Deployment, Settings
from services.ledger.runtime import LedgerRuntime
from services.platform.redis_gate import REDIS_ERRORS, RedisGate
from services.resilience.breaker import OPEN
from services.resilience.breaker_store import BreakerStore
from services.resilience.health_monitor import HealthMonitor

LATENCY_WINDOW_SECONDS = 3600
LATENCY_MAX_CALLS = 20_000  # the newest calls of the window, at most (one query, bounded)
INCIDENT_WINDOW_SECONDS = 86_400
INCIDENT_ROWS = 25
TIMELINE_ROWS = 50


class ConsoleParts(Protocol):
    """What the console reads of the gateway."""

    @property
    def settings(self) -> Settings: ...
    @property
    def redis(self) -> aioredis.Redis: ...
    @property
    def gate(self) -> RedisGate: ...
    @property
    def breakers(self) -> BreakerStore: ...
    @property
    def health(self) -> HealthMonitor: ...
    @property
    def deployment_table(self) -> Mapping[str, tuple[str, Deployment]]: ...
    @property
    def disabled(self) -> set[str]: ...
    @property
    def ledger_runtime(self) -> LedgerRuntime | None: ...
    @property
    def replicas(self) -> ReplicaRouting: ...


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def call_stats(calls: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """p50/p95 of the successful calls' durations (ms), the success ratio and the count."""
    durations = sorted(ms for ms, ok in calls if ok)
    return {
        "p50_ms": round(percentile(durations, 50), 1) if durations else None,
        "p95_ms": round(percentile(durations, 95), 1) if durations else None,
        "success_rate": round(len(durations) / len(calls), 4) if calls else None,
        "calls": len(calls),
    }


def window_stats(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The same figures from a health monitor's window (this process only)."""
    latency = summary.get("latency_ms") or {}
    return {
        "p50_ms": latency.get("p50"),
        "p95_ms": latency.get("p95"),
        "success_rate": summary.get("success_rate"),
        "calls": summary.get("samples", 0),
    }


async def overview(parts: ConsoleParts) -> dict[str, Any]:
    """Everything the page refreshes, and the problems met while reading it."""
    problems: list[str] = []
    board = parts.breakers
    if not await board.sync():
        problems.append("Redis unreachable: this process's own view (fail-open)")
    runtime = parts.ledger_runtime
    calls: dict[str, list[tuple[float, bool]]] | None = None
    incidents: list[dict[str, Any]] = []
    if runtime is not None:
        # Imported on use: a process with an external writer loads the database layer only
        # once an operator looks (services/ledger/runtime.py).
        from sqlalchemy.exc import SQLAlchemyError

        from services.ledger import reports

        now = time.time()
        try:
            calls = await reports.recent_calls(runtime.engine, now - LATENCY_WINDOW_SECONDS,
                                               LATENCY_MAX_CALLS)  # fmt: skip
            incidents = await reports.recent_incidents(
                runtime.engine, now - INCIDENT_WINDOW_SECONDS, INCIDENT_ROWS
            )
        except SQLAlchemyError:
            problems.append("the ledger database cannot be reached")
        if runtime.state().problem:
            problems.append(f"ledger: {runtime.state().problem}")
    timeline: list[dict[str, Any]] = []
    if parts.gate.available:
        try:
            timeline = await read_timeline(parts.redis, parts.settings.redis.key_prefix,
                                           TIMELINE_ROWS)  # fmt: skip
        except REDIS_ERRORS as exc:
            parts.gate.mark_down(exc)
    planner = parts.replicas.view()
    for model, info in (planner.get("models") or {}).items():
        if info.get("problem"):
            problems.append(f"planner, {model}: {info['problem']}")
    return {
        "generated_at": time.time(),
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "ledger": runtime is not None,
        "latency_source": (
            "upstream calls of the last hour in the ledger, every process"
            if calls is not None
            else "this process's recent calls (ledger off or unreachable)"
        ),
        "deployments": deployments(parts, calls),
        "default_selector": parts.settings.sessions.default_selector,
        "chains": chains(parts),
        "planner": planner,
        "timeline": timeline,
        "incidents": incidents,
    }


def deployments(
    parts: ConsoleParts, calls: Mapping[str, list[tuple[float, bool]]] | None
) -> list[dict[str, Any]]:
    """Each deployment with its breaker, health, latency and success."""
    board, now = parts.breakers, time.time()
    out = []
    for name in board.names:
        model, deployment = parts.deployment_table[name]
        state = board.state(name)
        configured = parts.settings.models.get(model)
        stats = (
            call_stats(calls.get(name, []))
            if calls is not None
            else window_stats(parts.health.summary(name))
        )
        out.append({
            "name": name,
            "model": model,
            "provider": deployment.provider,
            "local": bool(configured and configured.local),
            "enabled": name not in parts.disabled,
            "healthy": parts.health.healthy(name),
            "breaker": state.state,
            "retry_in_seconds": (
                round(max(0.0, state.open_until - now), 1) if state.state == OPEN else None
            ),
            "trips": state.trips,
            **stats,
        })  # fmt: skip
    return out


def chains(parts: ConsoleParts) -> dict[str, list[dict[str, Any]]]:
    """Each chain's steps and whether each could serve a request now."""
    usable_models = {
        model
        for name, (model, _) in parts.deployment_table.items()
        if name not in parts.disabled and parts.health.healthy(name) and parts.breakers.usable(name)
    }
    return {
        chain: [
            {"step": step, "kind": "tier" if step in TIERS else "model",
             "usable": step in TIERS or step in usable_models}
            for step in steps
        ]
        for chain, steps in parts.settings.chain_steps().items()
    }  # fmt: skip
